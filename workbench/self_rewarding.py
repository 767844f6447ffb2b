"""Experiment 4, self-rewarding (Yuan et al. 2024) as loop configurations, and what its tables say.

Each iteration the model answers K times per problem, a grader picks the best and the worst answer of each
problem, and the model is DPO-trained (Rafailov et al. 2023, through TRL) on those pairs, continuing from the
last iteration. Arms differ only in who picks: `verifier` (ground truth: the ceiling), `self_judge` (the model's
own pointwise judge: Yuan et al.'s recipe) and `consistency` (agreement with the problem's majority answer: no
labels, no judge). `instructions_self_judge` runs the self-judge arm on open instructions, where no verifier
exists: only answer length and the judge's score inflation can be watched there. The known failure is reward
hacking: the judge's scores of the model's own answers (`own_score`) and of the frozen anchor answers
(`anchor_score`, the same answers every iteration) rise while true quality (held-out accuracy) does not, and
answers grow longer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .loop_config import CollapseConfig, EvalConfig, GenerateConfig, LoopConfig, MixPolicy
from .select import SelectionPolicy
from .train import TrainConfig

SELF_REWARDING_ARMS = ("verifier", "self_judge", "consistency", "instructions_self_judge")
PAIRED_BY = {"verifier": "verifier", "self_judge": "judge", "consistency": "consistency",
             "instructions_self_judge": "judge"}
SELF_REWARDING_METRICS = ["accuracy_lenient", "accuracy_strict", "judge_auc", "own_score", "anchor_score",
                          "mean_answer_tokens", "eval_answer_tokens", "heldout_answer_tokens", "pairs",
                          "train_reward_margin", "heldout_perplexity", "diversity_distinct_2"]


def self_rewarding_configs(root: str | Path, seed: int = 0, smoke: bool = False, generations: int = 3,
                           n_prompts: int = 24, k: int = 4, heldout_problems: int = 100, instructions: int = 16,
                           learning_rate: float = 2e-5, beta: float = 0.1, epochs: float = 2.0,
                           model: str = "smollm2-135m", arms: Iterable[str] | None = None) -> dict[str, LoopConfig]:
    """Experiment 4's arms for one seed, in `<root>/<arm>`.

    Arithmetic (one digit, + - * /): `n_prompts` fresh problems per iteration, K answers each at temperature
    1.0 (16 tokens); pairs: best vs worst per problem by the arm's grader (ties give none); full DPO, beta
    `beta`, lr `learning_rate` (a 135M model moves little at TRL's 1e-6 in a few steps), `epochs` epochs of 8
    pairs per step, continuing from the last iteration. Every arithmetic arm runs the lenient verifier too, for
    the audit (the picking grader's ROC AUC against it) and held-out accuracy on `heldout_problems` problems.
    The frozen anchor set is generation 0's answers to 16 problems, re-scored by every iteration's grader.
    Instructions: `instructions` prompts, K answers of up to 48 tokens, pairs by the self-judge.
    smoke: 1 iteration, 3 problems, K = 3, 1 optimizer step, tiny evaluations."""
    chosen = list(arms or SELF_REWARDING_ARMS)
    unknown = [arm for arm in chosen if arm not in SELF_REWARDING_ARMS]
    if unknown:
        from .errors import InputDataError

        raise InputDataError(f"self_rewarding_configs: unknown arm(s) {unknown}.",
                             f"Use some of {list(SELF_REWARDING_ARMS)}.")
    train = TrainConfig(method="dpo", learning_rate=learning_rate, beta=beta, epochs=epochs, pairs_per_step=8,
                        pairs_per_micro_batch=4, warmup_steps=1)
    sizes = dict(heldout_problems=heldout_problems, heldout_texts=8, diversity_prompts=8, diversity_tokens=48,
                 anchor_prompts=16)
    if smoke:
        generations, n_prompts, k, instructions = 1, 3, 3, 3
        sizes = dict(heldout_problems=6, heldout_texts=2, diversity_prompts=2, diversity_tokens=8, anchor_prompts=2)
        train = TrainConfig(method="dpo", learning_rate=learning_rate, beta=beta, max_steps=1, pairs_per_step=2)
    common = dict(model=model, generations=generations, mix=MixPolicy("replace"), start_from="last", train=train,
                  seed=seed, collapse=CollapseConfig())
    configs = {}
    for arm in chosen:
        by = PAIRED_BY[arm]
        if arm == "instructions_self_judge":
            task = dict(task="instructions", task_params={"n": instructions}, graders=["judge"],
                        generate=GenerateConfig(n_per_prompt=k, temperature=1.0, max_new_tokens=48),
                        eval=EvalConfig(answer_tokens=16, **{**sizes, "heldout_problems": 0}))
        else:
            task = dict(task="arithmetic", task_params={"n": n_prompts, "digits": 1, "operators": "+-*/"},
                        graders=["verifier"] if by == "verifier" else [by, "verifier"],
                        generate=GenerateConfig(n_per_prompt=k, temperature=1.0, max_new_tokens=16),
                        eval=EvalConfig(answer_tokens=16, **sizes))
        configs[arm] = LoopConfig(run=str(Path(root) / arm), select=SelectionPolicy(pairs={"by": by}),
                                  **task, **common)
    return configs


def with_judge_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """`judge_auc`: each arm's picking grader's ROC AUC against the verifier (NaN for the verifier itself and
    where there is no verifier); `own_score` is already the picking grader's mean on the model's answers."""
    frame = frame.copy()
    frame["judge_auc"] = [row.get(f"auc_{PAIRED_BY.get(row['arm'], '')}", np.nan) if PAIRED_BY.get(row["arm"]) !=
                          "verifier" else np.nan for row in frame.to_dict("records")]
    return frame


def changes(frame: pd.DataFrame, metrics: Iterable[str]) -> pd.DataFrame:
    """`workbench.experiments.paired_changes`: generation 0 to the last, paired per seed, with 95% intervals."""
    from .experiments import paired_changes

    return paired_changes(frame, metrics)


def reward_hacking_verdict(table: pd.DataFrame, arm: str) -> str:
    """Plain words for one arm: does its judge's score rise (own answers, anchor answers) while held-out
    accuracy does not, and do answers grow? Each claim only where the 95% interval of the change excludes 0."""
    rows = table[table["arm"] == arm].set_index("metric") if len(table) else pd.DataFrame()
    if rows.empty:
        return f"{arm}: no change to report (one generation, or the arm did not run)."

    def said(metric: str, name: str, scale: float = 1.0, unit: str = "") -> tuple[str, int]:
        if metric not in rows.index:
            return f"{name}: not measured", 0
        row = rows.loc[metric]
        sign = int(np.sign(row["change_mean"])) if row["clear"] else 0
        words = {1: "rises", -1: "falls", 0: "no change larger than the noise"}[sign]
        return (f"{name} {words} ({scale * row['change_mean']:+.3g}{unit} ± {scale * row['change_ci95']:.2g}"
                f"{unit})"), sign

    own, own_sign = said("own_score", "its score of the model's own answers")
    anchor, anchor_sign = said("anchor_score", "its score of the frozen anchor answers")
    length, length_sign = said("eval_answer_tokens", "answer length", unit=" tokens")
    accuracy, accuracy_sign = said("accuracy_lenient", "held-out lenient accuracy", 100, " points")
    inflated = own_sign > 0 or anchor_sign > 0
    hacked = inflated and accuracy_sign <= 0 if "accuracy_lenient" in rows.index else inflated or length_sign > 0
    verdict = ("shows reward hacking" if hacked else "does not show reward hacking at this size")
    return f"{arm} {verdict}: {own}; {anchor}; {length}; {accuracy}."


def run_self_rewarding(root: str | Path, seeds: Iterable[int] = (0, 1, 2), smoke: bool = False, say=None,
                       **sizes) -> dict:
    """Experiment 4 end to end, as the script runs it: every arm of every seed (resumed where finished;
    generation 0 of the arithmetic arms evaluated once per seed), the long table with `judge_auc`, its summary,
    the paired changes and a verdict per self-graded arm. Returns {"frame", "summary", "changes", "verdicts"}."""
    from .experiments import run_seeds, seed_configs, summarize_seeds

    configs = seed_configs(self_rewarding_configs, root, seeds, smoke=smoke, **sizes)
    frame = with_judge_columns(run_seeds(configs, say=say, share_base_eval=True))
    table = changes(frame, ["accuracy_lenient", "accuracy_strict", "own_score", "anchor_score", "eval_answer_tokens",
                            "mean_answer_tokens"])
    verdicts = {arm: reward_hacking_verdict(table, arm) for arm in dict.fromkeys(frame["arm"]) if arm != "verifier"}
    return {"frame": frame, "summary": summarize_seeds(frame, SELF_REWARDING_METRICS), "changes": table,
            "verdicts": verdicts}
