"""Experiment 3: label-free self-improvement. Experiment 1's arithmetic loop (one-digit problems, all four
operators), but every arm keeps answers by their final number in any format, and each arm chooses what to
learn from with a different grader: the lenient verifier (the ceiling), self-consistency, a pairwise
self-judge, a pointwise self-judge, a panel of those fitted on at most 32 verifier labels, or nothing
(every sample kept: the floor). Reports held-out lenient accuracy (the headline) and strict accuracy per
generation, each self-grader's ROC AUC against the verifier, accept rates, the share of accepted samples
that are right, the cost per accepted sample, and the share of the verifier arm's lenient gain each arm
recovers (paired per seed, 95% t-interval over seeds). The arms' exact policies are in
workbench/experiments.py (`label_free_configs`).

    python experiments/label_free.py            # full size: 6 arms x seeds 0,1,2
    python experiments/label_free.py --smoke    # every arm x 3 seeds x 1 generation, tiny sizes

Default size: SIZES_PLACEHOLDER
"""
from __future__ import annotations

from common import markdown_table, run_experiment

COLUMNS = ["arm", "generation", "accuracy_lenient", "accuracy_strict", "auc_consistency", "auc_pairwise", "auc_judge",
           "auc_certainty", "auc_panel", "accept_rate", "accepted", "accepted_precision", "cost_per_accepted_sample",
           "cost", "heldout_perplexity", "diversity_distinct_2", "train_examples", "train_last_loss", "heldout_problems",
           "eval_seconds"]


def headline(frame) -> dict:
    from workbench.experiments import label_free_headline

    return {"headline": label_free_headline(frame)}


def markdown(summary, fields: dict) -> str:
    """The summary per (arm, generation) with the labels each arm used, then the headline table."""
    from workbench.experiments import (LABEL_FREE_LABELS, LABEL_FREE_METRICS, format_summary,
                                       label_free_headline_table, label_free_verdict)

    summary = summary.assign(labels=summary["arm"].map(LABEL_FREE_LABELS).fillna(""))
    shown = [m for m in LABEL_FREE_METRICS if m not in ("accepted", "diversity_distinct_2", "train_last_loss")]
    table = format_summary(summary, shown, keep=["arm", "labels", "generation", "seeds"])
    result = fields["headline"]
    return (markdown_table(table) + "\n\nHeadline: the share of the verifier arm's lenient-accuracy gain (last "
            "generation minus generation 0) each arm recovers, paired per seed.\n\n"
            + markdown_table(label_free_headline_table(result)) + "\n\n" + label_free_verdict(result))


def main(argv: list[str] | None = None) -> int:
    from workbench.experiments import LABEL_FREE_METRICS, label_free_configs

    return run_experiment("label_free", label_free_configs, COLUMNS, __doc__, metrics=LABEL_FREE_METRICS,
                          extra=headline, markdown=markdown, share_base_eval=True, argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
