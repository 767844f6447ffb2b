"""A panel: one score from several graders' existing score columns (mean, min, a vote, or a fitted logistic).

Combining weak, label-free graders (a self-judge, self-consistency, self-certainty) is how label-free
self-improvement pipelines decide what to keep: Huang et al. 2022 ("Large Language Models Can
Self-Improve") filter by consistency, Kang et al. 2025 ("Scalable Best-of-N Selection for Large Language
Models via Self-Certainty") by certainty, Zheng et al. 2023 ("Judging LLM-as-a-Judge") by a model judge.
"logistic" calibrates the combination on a few labels (the verifier's, or a human's), as in stacking
(Wolpert 1992): a weight per grader and P(good) per row, with its cross-validated ROC AUC.

The panel reads the `score__<grader>` columns that `grade()` adds: list it after its graders in the same
`grade()` call (or grade a table that already has them).
"""
from __future__ import annotations

import hashlib
import json
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputDataError
from ..store import score_column

HOWS = ("mean", "min", "vote", "logistic")
GOOD, BAD = "good", "bad"  # human labels, as Run.labels() gives them


class Panel:
    """One score in [0, 1] from the score columns of `graders`.

    how="mean" / "min": the row's mean / minimum over the graders that scored it (NaN ignored; NaN when none
        did). Both assume each grader's scores are in [0, 1] (all the workbench's graders are).
    how="vote": the share of the graders that scored the row whose score is >= its threshold
        (`thresholds`: grader -> threshold; None or a missing grader: 0.5).
    how="logistic": a scikit-learn LogisticRegression (L2, C=1) on the graders' scores, fitted on at most
        `n_labels` labelled rows drawn with `seed`; a grader's NaN is imputed with its mean over the fitting
        rows (0.5 if it scored none of them). Labels: `labels` names a score column (default "verifier";
        a score >= 0.5 is good, NaN is unlabelled), or "human" with `human_labels` (sample_id -> "good" /
        "bad", e.g. `Run.labels()`). Scores every row with P(good). Fitted: `weights_` (grader ->
        coefficient, and "intercept"), `cv_auc_` (stratified k-fold ROC AUC, k = min(5, smaller class
        count); NaN with `message_` when k < 2), `training_ids_` (the labelled rows it was fitted on, which
        a run marks as trained_on__<name>: judge the panel on the other rows).

    With a run, a resumed grade() hands the panel only the rows left to score; a logistic panel then fits
    on the labels among those rows. Grade into a new run to refit on every row.
    """

    def __init__(self, graders: Sequence[str], how: str = "mean", thresholds: dict[str, float] | None = None,
                 labels: str = "verifier", human_labels: dict[str, str] | None = None, n_labels: int = 32,
                 seed: int = 0, name: str = "panel"):
        graders = [str(g)[len("score__"):] if str(g).startswith("score__") else str(g) for g in graders]
        if not graders:
            raise InputDataError("A Panel needs at least one grader.", "Pass graders=['judge', 'consistency'], say.")
        if how not in HOWS:
            raise InputDataError(f"Panel how={how!r} is not one of {HOWS}.", "Pick one of them.")
        if how == "logistic":
            _check_labels(graders, labels, human_labels, n_labels)
        unknown = sorted(set(thresholds or {}) - set(graders))
        if unknown:
            raise InputDataError(f"Panel thresholds name graders {unknown} that are not in graders={graders}.",
                                 "Give thresholds only for the panel's graders.")
        self.name, self.graders, self.how, self.seed = name, graders, how, int(seed)
        self.thresholds = {g: float(t) for g, t in (thresholds or {}).items()}
        self.labels, self.n_labels = labels, int(n_labels)
        # recorded by count and digest, not in full: the run's config stays short, and other labels still
        # make a different configuration
        self.human_labels = _digest(human_labels) if human_labels is not None else None
        self._human_labels = dict(human_labels or {})

    def score(self, samples: pd.DataFrame) -> pd.Series:
        features = self._features(samples)
        if self.how == "mean":
            values = features.mean(axis=1, skipna=True)
        elif self.how == "min":
            values = features.min(axis=1, skipna=True)
        elif self.how == "vote":
            limits = pd.Series({g: self.thresholds.get(g, 0.5) for g in self.graders})
            votes = features.ge(limits, axis=1).astype(float).where(features.notna())
            values = votes.mean(axis=1, skipna=True)  # share of the graders that scored the row
        else:
            values = self._fit_predict(samples, features)
        return pd.Series(values.to_numpy(dtype=float), index=samples.index)

    def _features(self, samples: pd.DataFrame) -> pd.DataFrame:
        columns = [score_column(g) for g in self.graders]
        missing = [g for g, c in zip(self.graders, columns) if c not in samples.columns]
        if missing:
            raise InputDataError(
                f"Panel {self.name!r} combines the scores of {missing}, which the samples lack "
                f"(no column {[score_column(g) for g in missing]}).",
                f"Run those graders first: list them before the panel in the same grade() call, e.g. "
                f"grade(samples, [..graders named {missing}.., Panel(...)]).")
        frame = samples[columns].apply(pd.to_numeric, errors="coerce").astype(float)
        frame.columns = self.graders
        return frame

    def _label_values(self, samples: pd.DataFrame) -> pd.Series:
        """1.0 good, 0.0 bad, NaN unlabelled, per row."""
        if self.labels == "human":
            if "sample_id" not in samples.columns:
                raise InputDataError("Panel labels='human' needs a sample_id column to find each row's label.",
                                     "Grade the output of workbench.generate().")
            verdict = samples["sample_id"].map(self._human_labels)
            return verdict.map({GOOD: 1.0, BAD: 0.0}).astype(float)
        column = score_column(self.labels)
        if column not in samples.columns:
            raise InputDataError(f"Panel {self.name!r} takes its labels from {column}, which the samples lack.",
                                 f"Run the {self.labels!r} grader before the panel (e.g. Verifier() for the "
                                 "arithmetic task), or pass labels='human' with human_labels=run.labels().")
        values = pd.to_numeric(samples[column], errors="coerce").astype(float)
        return (values >= 0.5).astype(float).where(values.notna())

    def _fit_predict(self, samples: pd.DataFrame, features: pd.DataFrame) -> pd.Series:
        from sklearn.linear_model import LogisticRegression

        labels = self._label_values(samples)
        labelled = np.flatnonzero(labels.notna().to_numpy())
        rng = np.random.default_rng(self.seed)
        chosen = np.sort(rng.choice(labelled, size=min(self.n_labels, len(labelled)), replace=False))
        y = labels.to_numpy()[chosen]
        _check_classes(y, len(labelled), self.n_labels, self.labels)
        fill = features.iloc[chosen].mean().fillna(0.5)  # the fitting rows' means; 0.5 where none scored
        x = features.fillna(fill).to_numpy()
        model = LogisticRegression(C=1.0, max_iter=1000, random_state=self.seed).fit(x[chosen], y)
        self.cv_auc_, self.message_ = _cv_auc(x[chosen], y, self.seed)
        self.weights_ = {**{g: float(w) for g, w in zip(self.graders, model.coef_[0])},
                         "intercept": float(model.intercept_[0])}
        ids = samples["sample_id"] if "sample_id" in samples.columns else pd.Series(samples.index)
        self.training_ids_ = list(ids.iloc[chosen])
        return pd.Series(model.predict_proba(x)[:, 1], index=samples.index)


def _check_labels(graders: list[str], labels: str, human_labels, n_labels: int) -> None:
    if n_labels < 2:
        raise InputDataError(f"Panel n_labels={n_labels}: a logistic panel needs at least 2 labelled rows.",
                             "Use n_labels=32 or more.")
    if labels == "human" and not human_labels:
        raise InputDataError("Panel labels='human' without human_labels.",
                             "Pass human_labels=run.labels() (sample_id -> 'good' / 'bad').")
    if labels != "human" and human_labels:
        raise InputDataError(f"Panel got human_labels but labels={labels!r}, so they would be ignored.",
                             "Pass labels='human' to fit on them.")
    if labels in graders:
        raise InputDataError(f"Panel labels={labels!r} is also one of its graders: the fit would only copy it.",
                             "Take the labels from a grader outside the panel (or from human labels).")


def _check_classes(y: np.ndarray, n_labelled: int, n_labels: int, labels: str) -> None:
    source = "human labels" if labels == "human" else f"labels from score__{labels}"
    if len(y) == 0:
        raise InputDataError(f"Panel: no row has a label ({source}).",
                             "Grade with the label grader first, or label some rows (labels='human').")
    if len(np.unique(y)) < 2:
        which = "correct (good)" if y[0] == 1 else "incorrect (bad)"
        raise InputDataError(f"Panel: all {len(y)} labelled rows used ({source}; {n_labelled} labelled in all) are "
                             f"{which}, and a logistic fit needs both classes.",
                             f"Raise n_labels (now {n_labels}) or add labels of the other class, or use how='mean'.")


def _cv_auc(x: np.ndarray, y: np.ndarray, seed: int) -> tuple[float, str]:
    """Stratified k-fold ROC AUC with k = min(5, smaller class count); NaN and why when k < 2."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    folds = int(min(5, np.bincount(y.astype(int)).min()))
    if folds < 2:
        return float("nan"), (f"cv_auc_ is NaN: the smaller class has {folds} labelled row(s), and "
                              "cross-validation needs at least 2; raise n_labels.")
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    model = LogisticRegression(C=1.0, max_iter=1000, random_state=seed)
    auc = float(np.mean(cross_val_score(model, x, y, cv=split, scoring="roc_auc")))
    return auc, f"fitted on {len(y)} labelled rows; cv_auc_ from {folds}-fold stratified cross-validation."


def _digest(human_labels: dict[str, str]) -> str:
    text = json.dumps(sorted((str(k), str(v)) for k, v in human_labels.items()))
    return f"{len(human_labels)} labels, sha1 {hashlib.sha1(text.encode()).hexdigest()[:12]}"
