"""Graders over sentence embeddings: novelty against a pool, realism by a real-vs-synthetic classifier."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputDataError
from .base import require_columns


class Novelty:
    """1 - max cosine similarity of a completion to a reference pool (the accepted pool, earlier
    generations' samples, ...), in [0, 2] but in practice [0, 1]; an empty pool gives 1.0 for all."""

    def __init__(self, pool: Sequence[str] = (), name: str = "novelty"):
        self.name = name
        self.pool_size = len(pool)
        self._pool = list(map(str, pool))
        self._pool_embeddings = None

    def score(self, samples: pd.DataFrame) -> pd.Series:
        from ..embeddings import embed

        require_columns(samples, ["completion"], self.name)
        if not self._pool:
            return pd.Series(1.0, index=samples.index)
        if self._pool_embeddings is None:
            self._pool_embeddings = embed(self._pool)
        similarity = embed(list(samples["completion"])) @ self._pool_embeddings.T
        return pd.Series(1.0 - similarity.max(axis=1), index=samples.index, dtype=float)


class Realism:
    """P(real) from a logistic regression on sentence embeddings, trained on real texts (label 1) versus
    synthetic texts (label 0, e.g. earlier samples); its cross-validated ROC AUC is in `.train_auc_`
    (0.5 means the classifier cannot tell them apart: the synthetic text looks real to it).

    With `synthetic_texts=None` it is the machine-text detector of a generation (the self-learning loop's
    `realism` grader, Drayson et al. 2025): `score(samples)` fits on the real texts versus the samples
    themselves and gives every sample the P(real) of a classifier that did not see it (`folds`-fold cross-fitting),
    so a sample's score is never its own memorised label. Real texts are cut to the samples' median word count
    first, so length alone does not give the synthetic text away."""

    def __init__(self, real_texts: Sequence[str], synthetic_texts: Sequence[str] | None = None,
                 name: str = "realism", C: float = 1.0, seed: int = 0, folds: int = 5):
        self.name, self.C, self.seed, self.folds = name, C, seed, folds
        self.real_texts = [str(t) for t in real_texts]
        self.n_real = len(self.real_texts)
        self._classifier = None
        if synthetic_texts is None:  # cross-fitted on the samples score() gets
            if self.n_real < 2:
                raise InputDataError(f"Realism needs at least 2 real texts (got {self.n_real}).",
                                     "Pass more real texts, e.g. the corpus task's references.")
            return
        x, y = self._data(self.real_texts, list(synthetic_texts))
        from sklearn.model_selection import cross_val_score

        self.n_synthetic = len(synthetic_texts)
        folds = int(min(5, self.n_real, self.n_synthetic))
        self._classifier = self._new()
        self.train_auc_ = float(np.mean(cross_val_score(self._classifier, x, y, cv=folds, scoring="roc_auc")))
        self._classifier.fit(x, y)

    def _new(self):
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(C=self.C, max_iter=1000, random_state=self.seed, class_weight="balanced")

    def _data(self, real: list[str], synthetic: list[str]) -> tuple[np.ndarray, np.ndarray]:
        from ..embeddings import embed

        if len(real) < 2 or len(synthetic) < 2:
            raise InputDataError(f"Realism needs at least 2 real and 2 synthetic texts (got {len(real)} "
                                 f"and {len(synthetic)}).", "Pass more texts, e.g. the corpus task's references.")
        return np.vstack([embed(real), embed(synthetic)]), np.r_[np.ones(len(real)), np.zeros(len(synthetic))]

    def score(self, samples: pd.DataFrame) -> pd.Series:
        from ..embeddings import embed

        require_columns(samples, ["completion"], self.name)
        if len(samples) == 0:
            return pd.Series([], dtype=float, index=samples.index)
        if self._classifier is not None:
            return pd.Series(self._classifier.predict_proba(embed(list(samples["completion"])))[:, 1],
                             index=samples.index, dtype=float)
        return self._cross_fit(samples)

    def _cross_fit(self, samples: pd.DataFrame) -> pd.Series:
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        synthetic = [str(t) for t in samples["completion"]]
        words = int(np.median([len(t.split()) for t in synthetic])) or 1
        real = [" ".join(t.split()[:words]) for t in self.real_texts]
        x, y = self._data(real, synthetic)
        folds = int(min(self.folds, self.n_real, len(synthetic)))
        split = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
        p_real = cross_val_predict(self._new(), x, y, cv=split, method="predict_proba")[:, 1]
        self.n_synthetic, self.train_auc_ = len(synthetic), float(roc_auc_score(y, p_real))
        return pd.Series(p_real[len(real):], index=samples.index, dtype=float)


class RewardModel:
    """Any `AutoModelForSequenceClassification`: sigmoid of the logit for one-label models, otherwise the
    softmax probability of `label` (default: the last). Scores prompt and completion as a text pair."""

    def __init__(self, model: str, name: str = "reward", label: int = -1, batch_size: int = 16,
                 trust_remote_code: bool = False):
        self.model, self.name, self.label, self.batch_size = str(model), name, label, batch_size
        self.trust_remote_code = trust_remote_code
        self._loaded = None

    def _load(self):
        if self._loaded is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            try:
                tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
                model = AutoModelForSequenceClassification.from_pretrained(
                    self.model, trust_remote_code=self.trust_remote_code).eval()
            except (OSError, ValueError) as exc:
                raise InputDataError(f"Could not load reward model {self.model!r} ({str(exc).splitlines()[0][:200]}).",
                                     "Pass a local folder holding a sequence-classification model.") from exc
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
                model.config.pad_token_id = tokenizer.pad_token_id
            self._loaded = (tokenizer, model)
        return self._loaded

    def score(self, samples: pd.DataFrame) -> pd.Series:
        import torch

        require_columns(samples, ["prompt", "completion"], self.name)
        tokenizer, model = self._load()
        out = []
        for start in range(0, len(samples), self.batch_size):
            chunk = samples.iloc[start:start + self.batch_size]
            encoded = tokenizer(list(chunk["prompt"].astype(str)), list(chunk["completion"].astype(str)),
                                padding=True, truncation=True, return_tensors="pt")
            with torch.inference_mode():
                logits = model(**encoded).logits.float()
            out.append(torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else torch.softmax(logits, -1)[:, self.label])
        values = torch.cat(out).numpy() if out else np.zeros(0)
        return pd.Series(values.astype(float), index=samples.index)
