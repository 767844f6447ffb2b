"""Experiment 2: model collapse on the corpus task (continue real text), three data-mix policies at the
same training compute: replace, keep_real(0.1), accumulate, 5 generations each. Reports held-out
real-text perplexity and diversity of free continuations per generation. See workbench/experiments.py.

    python experiments/collapse.py --seed 0   # full size, one seed (~22 min on a 2-core CPU)
    python experiments/collapse.py            # seeds 0,1,2 (3 x that); --seeds picks others
    python experiments/collapse.py --smoke --seed 0   # a minute: every stage, tiny sizes
"""
from __future__ import annotations

from common import run_experiment

COLUMNS = ["arm", "generation", "heldout_perplexity", "diversity_distinct_2", "diversity_self_bleu",
           "diversity_vendi_ngram", "diversity_mean_words", "train_examples", "collapsed"]


def main(argv: list[str] | None = None) -> int:
    from workbench.experiments import collapse_configs

    return run_experiment("collapse", collapse_configs, COLUMNS, __doc__, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
