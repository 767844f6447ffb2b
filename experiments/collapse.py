"""Experiment 2: model collapse on the corpus task (continue real text), three data-mix policies at the
same training compute: replace, keep_real(0.1), accumulate, 5 generations each. Reports held-out
real-text perplexity and diversity of free continuations per generation. See workbench/experiments.py.

    python experiments/collapse.py            # full size (~35 min on a 2-core CPU)
    python experiments/collapse.py --smoke    # a minute: every stage, tiny sizes
"""
from __future__ import annotations

import time

from common import ROOT, parse, write


def main() -> int:
    args = parse(__doc__)
    from workbench.experiments import collapse_configs, run_arms

    started = time.perf_counter()
    runs = args.runs or ROOT / "data" / "runs" / "experiments" / ("collapse" + ("-smoke" if args.smoke else ""))
    configs = collapse_configs(runs, smoke=args.smoke, seed=args.seed)
    frame = run_arms(configs, say=lambda text: print(text, flush=True))
    columns = ["arm", "generation", "heldout_perplexity", "diversity_distinct_2", "diversity_self_bleu",
               "diversity_vendi_ngram", "diversity_mean_words", "train_examples", "collapsed"]
    table = frame[[c for c in columns if c in frame.columns]]
    write("collapse", frame, table, args, started,
          extra={"configs": {name: vars(config) for name, config in configs.items()}})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
