"""Experiment 1: self-improvement with a verifier (STaR / ReST-EM) on arithmetic, beside the same loop
with the model's own judge as the only filter. Reports strict accuracy (the final answer alone) on
held-out problems per generation. See workbench/experiments.py for the exact setup.

    python experiments/self_improvement.py            # full size (~30 min on a 2-core CPU)
    python experiments/self_improvement.py --smoke    # a minute: every stage, tiny sizes
"""
from __future__ import annotations

import time

from common import ROOT, parse, write


def main() -> int:
    args = parse(__doc__)
    from workbench.experiments import run_arms, self_improvement_configs

    started = time.perf_counter()
    runs = args.runs or ROOT / "data" / "runs" / "experiments" / ("self_improvement" + ("-smoke" if args.smoke else ""))
    configs = self_improvement_configs(runs, smoke=args.smoke, seed=args.seed)
    frame = run_arms(configs, say=lambda text: print(text, flush=True))
    columns = ["arm", "generation", "accuracy_strict", "accuracy_lenient", "accept_rate", "accepted",
               "judge_roc_auc", "heldout_perplexity", "diversity_distinct_2", "train_last_loss"]
    table = frame[[c for c in columns if c in frame.columns]]
    gains = {arm: float(g["accuracy_strict"].iloc[-1] - g["accuracy_strict"].iloc[0]) for arm, g in frame.groupby("arm")}
    write("self_improvement", frame, table, args, started,
          extra={"strict_gain_points": {arm: 100 * gain for arm, gain in gains.items()},
                 "configs": {name: vars(config) for name, config in configs.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
