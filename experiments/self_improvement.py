"""Experiment 1: self-improvement with a verifier (STaR / ReST-EM) on arithmetic, beside the same loop
with the model's own judge as the only filter. Reports strict accuracy (the final answer alone) on
held-out problems per generation. See workbench/experiments.py for the exact setup.

    python experiments/self_improvement.py            # full size (~30 min on a 2-core CPU)
    python experiments/self_improvement.py --smoke    # a minute: every stage, tiny sizes
"""
from __future__ import annotations

from common import run_experiment

COLUMNS = ["arm", "generation", "accuracy_strict", "accuracy_lenient", "accept_rate", "accepted", "judge_roc_auc",
           "heldout_perplexity", "diversity_distinct_2", "train_last_loss"]


def strict_gain_points(frame) -> dict:
    return {"strict_gain_points": {arm: 100 * float(g["accuracy_strict"].iloc[-1] - g["accuracy_strict"].iloc[0])
                                   for arm, g in frame.groupby("arm")}}


def main() -> int:
    from workbench.experiments import self_improvement_configs

    return run_experiment("self_improvement", self_improvement_configs, COLUMNS, __doc__, extra=strict_gain_points)


if __name__ == "__main__":
    raise SystemExit(main())
