"""The loop's preference-learning stages (self-rewarding: `train: {method: dpo}` with `select: {pairs: ...}`).

Per generation, `pairs_stage` turns the graded samples into DPO pairs (`workbench.pairs`, human labels
overriding the grader) and stores them (gen-XXX/pairs.parquet); the next generation's model is DPO-trained on
them, or keeps the previous one when no pair survived (the metrics say why). `anchor_stage` watches for reward
hacking (Yuan et al. 2024; Gao et al. 2023): a frozen **anchor set** (the answers of a few of generation 0's
prompts, stored once as gen-000/anchor.parquet) is re-scored by every generation's judge. The answers never
change, so a rising anchor score is the judge inflating, not the answers improving. The collapse monitor flags
that (`collapse.max_score_inflation`) and answers growing longer (`collapse.max_length_rise`).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .store import score_column

ANCHOR_TABLE = "anchor"  # gen-000/anchor.parquet: generation 0's answers to `eval.anchor_prompts` prompts
ANCHOR_COLUMNS = ("sample_id", "prompt_id", "prompt", "completion", "chat", "reference", "task", "finish_reason",
                  "n_completion_tokens")


def make_anchor(graded: pd.DataFrame, prompts: int, seed: int = 0) -> pd.DataFrame:
    """Every sample of `prompts` prompts drawn (seeded) from a generation's graded table, whole groups kept
    (a groupwise grader such as consistency scores a sample against the others of its prompt)."""
    group = graded["prompt_id"] if "prompt_id" in graded.columns else graded["prompt"]
    ids = pd.unique(group)
    chosen = np.random.default_rng(seed).choice(len(ids), size=min(prompts, len(ids)), replace=False)
    keep = group.isin(set(ids[np.sort(chosen)]))
    return graded.loc[keep, [c for c in ANCHOR_COLUMNS if c in graded.columns]].reset_index(drop=True)


def anchor_stage(step, graded: pd.DataFrame | None = None) -> dict:
    """{"anchor_score": mean} of this generation's `select.pairs.by` grader on the frozen anchor set, measured
    once per generation (stored in its metrics.json under `anchor`); {} when the loop makes no pairs, the
    grader is refitted per generation (panel), or (generation 0 before its samples) there is no anchor yet."""
    from .loop import _graders

    policy, run, generation = step.config.select.pairs, step.run, step.generation
    if policy is None or policy.by == "panel":
        return {}
    stored = run.metrics(generation).get("anchor")
    if stored:
        return {"anchor_score": stored["mean_score"]}
    anchor = run.read_frame(0, ANCHOR_TABLE)
    if anchor is None:
        if graded is None or generation != 0:
            return {}
        anchor = make_anchor(graded, step.config.eval.anchor_prompts, seed=step.config.seed)
        run.write_frame(0, ANCHOR_TABLE, anchor)
        scores = graded.set_index("sample_id")[score_column(policy.by)].reindex(anchor["sample_id"]).to_numpy(float)
    else:
        grader = _graders([policy.by], step.model(), seed=step.config.seed)[0]
        scores = pd.to_numeric(grader.score(anchor), errors="coerce").to_numpy(dtype=float)
    finite = scores[np.isfinite(scores)]
    mean = float(finite.mean()) if len(finite) else None
    run.update_metrics(generation, anchor={"by": policy.by, "mean_score": mean, "answers": len(anchor),
                                           "nan_scores": int(len(scores) - len(finite))})
    step.say(f"   gen {generation}: {policy.by} on the frozen anchor set ({len(anchor)} answers of generation 0): "
             f"{mean if mean is None else round(mean, 4)}")
    return {"anchor_score": mean}


def pairs_stage(step, graded: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The generation's preference pairs (stored as gen-XXX/pairs.parquet: the DPO training set) and what the
    metrics record: `pairs` (counts, prompts without a pair by reason, mean margin), `own_score` (the pairing
    grader's mean score on this model's own answers) and the `train_set` size."""
    from .pairs import pairs

    policy, run, generation = step.config.select.pairs, step.run, step.generation
    found = pairs(graded, by=policy.by, margin=policy.margin, per_prompt=policy.per_prompt,
                  labels=run.labels(generation))
    found.save(run, generation)
    step.say(f"   gen {generation}: {found.message}")
    own = pd.to_numeric(graded[score_column(policy.by)], errors="coerce")
    return found.frame, {"pairs": found.summary(), "own_score": float(own.mean()) if own.notna().any() else None,
                         "train_set": {"rows": found.n_pairs, "by_source": {"pairs": found.n_pairs}}}
