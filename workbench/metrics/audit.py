"""Judge audit: how well a grader's scores agree with a verifier or with human labels.

A self-judge that cannot tell right from wrong still produces confident-looking scores; the audit
makes that visible: ROC AUC (0.5 = chance), accuracy at the acceptance threshold, a reliability table
(is a score of 0.8 right 80% of the time?), and score inflation of a frozen anchor set over generations.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pandas as pd


def _clean(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=float)
    labels = np.asarray(labels, dtype=float)
    keep = np.isfinite(scores) & np.isfinite(labels)
    return scores[keep], labels[keep] >= 0.5


def roc_auc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties count one half (Mann-Whitney U).
    NaN when either class is missing (AUC is undefined then, not 0.5)."""
    s, y = _clean(scores, labels)
    positives, negatives = y.sum(), (~y).sum()
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = pd.Series(s).rank(method="average").to_numpy()
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def accuracy_at(scores, labels, threshold: float = 0.5) -> float:
    s, y = _clean(scores, labels)
    return float(((s >= threshold) == y).mean()) if len(s) else float("nan")


def cohen_kappa(a, b) -> float:
    """Agreement of two binary raters beyond chance (Cohen, 1960): (p_o - p_e) / (1 - p_e)."""
    a, b = _clean(a, b)
    if len(a) == 0:
        return float("nan")
    a = a >= 0.5 if a.dtype != bool else a
    observed = (a == b).mean()
    expected = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
    return float((observed - expected) / (1 - expected)) if expected < 1 else 1.0


def reliability_table(scores, labels, bins: int = 10) -> pd.DataFrame:
    """Per score bin: count, mean score, fraction actually positive; and the expected calibration error
    (count-weighted |mean score - positive rate|) in `.attrs["ece"]`."""
    s, y = _clean(scores, labels)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(s, edges[1:-1]), 0, bins - 1)
    rows = []
    for b in range(bins):
        members = index == b
        rows.append({"bin": f"[{edges[b]:.1f}, {edges[b + 1]:.1f}{']' if b == bins - 1 else ')'}",
                     "count": int(members.sum()),
                     "mean_score": float(s[members].mean()) if members.any() else np.nan,
                     "positive_rate": float(y[members].mean()) if members.any() else np.nan})
    table = pd.DataFrame(rows)
    filled = table["count"] > 0
    table.attrs["ece"] = float((table.loc[filled, "count"] * (table.loc[filled, "mean_score"] -
                                table.loc[filled, "positive_rate"]).abs()).sum() / max(len(s), 1))
    return table


def judge_audit(scores, labels, threshold: float = 0.5, bins: int = 10, method: str | None = None) -> dict:
    """Everything above for one grader against reference labels (verifier 0/1 or human good/bad).
    method: how the judge's scores were read (SelfJudge.method_: "logits", "logprobs", "parsed"), reported as is."""
    s, y = _clean(scores, labels)
    table = reliability_table(s, y, bins)
    return {"n": int(len(s)), "positives": int(y.sum()), "method": method, "roc_auc": roc_auc(s, y),
            "accuracy_at_threshold": accuracy_at(s, y, threshold), "threshold": threshold,
            "kappa_at_threshold": cohen_kappa(s >= threshold, y), "ece": table.attrs["ece"],
            "reliability": table.to_dict("records")}


def score_inflation(anchor_scores: Mapping[int, pd.Series]) -> pd.DataFrame:
    """A frozen anchor set re-scored by each generation's judge: mean score per generation and its drift
    from generation 0. Rising scores on unchanged samples mean the judge grew more lenient, not the data better."""
    rows = []
    base = None
    for generation in sorted(anchor_scores):
        mean = float(np.nanmean(np.asarray(anchor_scores[generation], dtype=float)))
        base = mean if base is None else base
        rows.append({"generation": generation, "mean_anchor_score": mean, "inflation": mean - base})
    return pd.DataFrame(rows)


def audit_table(graded: pd.DataFrame, verifier: str | None = "verifier",
                human_labels: Mapping[str, str] | None = None, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Every grader (score__<name> column) ranked by ROC AUC against the verifier and, when given, against
    human labels (sample_id -> 'good' | 'bad'; other labels ignored): one row per (grader, against) with
    roc_auc, a 95% percentile-bootstrap CI over rows (`n_boot` resamples, seeded; resamples missing a class
    are skipped), n (rows used), positives, excluded_trained and rank (1 = best within `against`).
    Rows a fitted grader was trained on (trained_on__<grader> True) are left out of that grader's AUC: its
    score there is in-sample. The verifier is not ranked against itself. Sorted by against, then rank."""
    from ..store import SCORE_PREFIX, TRAINED_PREFIX, score_column

    references = {}
    if verifier and score_column(verifier) in graded.columns:
        references["verifier"] = pd.to_numeric(graded[score_column(verifier)], errors="coerce").to_numpy(float)
    if human_labels and "sample_id" in graded.columns:
        verdict = {"good": 1.0, "bad": 0.0}
        references["human"] = graded["sample_id"].map(
            lambda sample_id: verdict.get(human_labels.get(sample_id), np.nan)).to_numpy(float)
    rng, rows = np.random.default_rng(seed), []
    for column in [c for c in graded.columns if str(c).startswith(SCORE_PREFIX)]:
        name = column[len(SCORE_PREFIX):]
        scores = pd.to_numeric(graded[column], errors="coerce").to_numpy(float)
        trained = (graded[TRAINED_PREFIX + name].fillna(False).astype(bool).to_numpy()
                   if TRAINED_PREFIX + name in graded.columns else np.zeros(len(graded), bool))
        for against, labels in references.items():
            if against == "verifier" and column == score_column(str(verifier)):
                continue
            keep = np.isfinite(scores) & np.isfinite(labels) & ~trained
            s, y = scores[keep], labels[keep] >= 0.5
            draws = (rng.integers(0, len(s), len(s)) for _ in range(n_boot if len(s) else 0))
            boots = np.array([roc_auc(s[i], y[i]) for i in draws], dtype=float)
            finite = boots[np.isfinite(boots)]
            low, high = np.percentile(finite, [2.5, 97.5]) if len(finite) else (np.nan, np.nan)
            rows.append({"grader": name, "against": against, "roc_auc": roc_auc(s, y), "ci_low": float(low),
                         "ci_high": float(high), "n": int(keep.sum()), "positives": int(y.sum()),
                         "excluded_trained": int((trained & np.isfinite(scores) & np.isfinite(labels)).sum())})
    table = pd.DataFrame(rows, columns=["grader", "against", "roc_auc", "ci_low", "ci_high", "n", "positives",
                                        "excluded_trained"])
    table["rank"] = table.groupby("against")["roc_auc"].rank(ascending=False, method="min",
                                                             na_option="bottom").astype(int)
    return table.sort_values(["against", "rank"], kind="stable").reset_index(drop=True)
