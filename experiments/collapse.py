"""Experiment 2: model collapse on the corpus task (continue real text), three data-mix policies at the
same training compute: replace, keep_real(0.1), accumulate, 5 generations each. Reports held-out
real-text perplexity and diversity of free continuations per generation. See workbench/experiments.py.

    python experiments/collapse.py            # full size (~35 min on a 2-core CPU)
    python experiments/collapse.py --smoke    # a minute: every stage, tiny sizes
"""
from __future__ import annotations

from common import run_experiment

COLUMNS = ["arm", "generation", "heldout_perplexity", "diversity_distinct_2", "diversity_self_bleu",
           "diversity_vendi_ngram", "diversity_mean_words", "train_examples", "collapsed"]


def main() -> int:
    from workbench.experiments import collapse_configs

    return run_experiment("collapse", collapse_configs, COLUMNS, __doc__)


if __name__ == "__main__":
    raise SystemExit(main())
