"""Experiment 4: self-rewarding with DPO (Yuan et al. 2024; Rafailov et al. 2023). Each iteration the model
answers K times per problem, a grader picks the best and the worst answer of each problem, and the model is
DPO-trained (TRL's DPOTrainer) on those pairs, continuing from the last iteration. Arms: who picks, the
`verifier` (ground truth: the ceiling), the model's own pointwise judge (`self_judge`, Yuan et al.'s recipe) or
self-`consistency` (no labels, no judge); and `instructions_self_judge`, the self-judge arm on open instructions,
where no verifier exists (only answer length and score inflation can be watched). Per iteration: held-out
strict and lenient accuracy, the picking grader's ROC AUC against the verifier, its mean score on the model's
own answers (`own_score`) and on a frozen anchor set (`anchor_score`: generation 0's answers to 16 problems,
re-scored by every iteration's model), mean answer length, pairs made and DPO's last reward margin. The
configs are in workbench/self_rewarding.py.

    python experiments/self_rewarding.py            # 4 arms x 3 iterations x seeds 0,1,2 (resumable)
    python experiments/self_rewarding.py --smoke    # 1 iteration, tiny sizes (the test suite runs it)

Default size: 3 iterations, 24 fresh problems per iteration, K = 4 answers (temperature 1.0, 16 tokens),
full DPO (beta 0.1, lr 2e-5, 2 epochs of 8 pairs per step), 100 held-out problems; instructions: 16 prompts,
K = 4, 48 tokens. Generation 0 of the three arithmetic arms is evaluated once per seed and shared.
"""
from __future__ import annotations

from common import markdown_table, run_experiment

COLUMNS = ["arm", "generation", "accuracy_lenient", "accuracy_strict", "judge_auc", "own_score", "anchor_score",
           "mean_answer_tokens", "eval_answer_tokens", "heldout_answer_tokens", "pairs", "train_reward_margin",
           "train_steps", "heldout_perplexity", "diversity_distinct_2", "collapsed", "collapse_flags", "eval_seconds"]


def headline(frame) -> dict:
    from workbench.self_rewarding import changes, reward_hacking_verdict

    table = changes(frame, ["accuracy_lenient", "accuracy_strict", "own_score", "anchor_score",
                            "eval_answer_tokens", "mean_answer_tokens"])
    verdicts = {arm: reward_hacking_verdict(table, arm) for arm in dict.fromkeys(frame["arm"]) if arm != "verifier"}
    return {"changes": table.to_dict("records"), "verdicts": verdicts}


def markdown(summary, fields: dict) -> str:
    import pandas as pd

    from workbench.experiments import format_summary
    from workbench.self_rewarding import SELF_REWARDING_METRICS

    shown = [m for m in SELF_REWARDING_METRICS if f"{m}_mean" in summary.columns and m not in ("heldout_answer_tokens",)]
    table = format_summary(summary, shown)
    changes = pd.DataFrame(fields["changes"])
    if len(changes):
        changes = changes.assign(change=[f"{m:+.3g} ± {h:.2g}" for m, h in zip(changes["change_mean"], changes["change_ci95"])],
                                 larger_than_noise=changes["clear"].map({True: "yes", False: "no"}))
        changes = changes[["arm", "metric", "change", "larger_than_noise"]]
    return (markdown_table(table) + "\n\nChange from generation 0 to the last iteration, paired per seed (mean ± 95% "
            "half-width over seeds):\n\n" + (markdown_table(changes) if len(changes) else "(one generation: none)")
            + "\n\n" + "\n".join(f"- {text}" for text in fields["verdicts"].values()))


def main(argv: list[str] | None = None) -> int:
    from workbench.self_rewarding import SELF_REWARDING_METRICS, self_rewarding_configs, with_judge_columns

    return run_experiment("self_rewarding", self_rewarding_configs, COLUMNS, __doc__, metrics=SELF_REWARDING_METRICS,
                          extra=headline, markdown=markdown, share_base_eval=True, argv=argv,
                          prepare=with_judge_columns)


if __name__ == "__main__":
    raise SystemExit(main())
