"""Re-selection fast enough for a slider: per-row features cached once, each threshold change costs
a few vectorised passes.

    live = LiveSelection(graded, embeddings=embed(graded["completion"]))
    live.select(SelectionPolicy(thresholds={"judge": 0.7}))   # -> the same Selection accept() gives
    live.update(selection.mask)   # -> accept rate and the accepted set's diversity

The rule itself is `select.apply_policy`, shared with `accept`: here it runs on arrays cached once.
What is cached: every score column as a float array, the prompt and sample ids, the texts; each row's word n-gram ids (n = 1, 2, 3) as
flat arrays; each row's UTF-8 bytes; the Gram matrix of the accepted rows' embeddings, updated with
only the rows whose status changed. Distinct-n and Vendi are exact (the same definitions as
`workbench.metrics.diversity`); the compression ratio is computed on at most `compression_sample`
accepted texts taken in a fixed random order, which gzip's 32 KB window makes nearly the same as the
whole set's (tested).
"""
from __future__ import annotations

import gzip

import numpy as np
import pandas as pd

from .errors import InputDataError
from .metrics.diversity import ngrams, tokenize
from .select import Selection, SelectionPolicy, apply_policy, check_inputs, score_columns, selection_params


class LiveSelection:
    def __init__(self, samples: pd.DataFrame, embeddings: np.ndarray | None = None, text_column: str = "completion",
                 compression_sample: int = 1000, seed: int = 0):
        self.n = len(samples)
        self.scores = {name: pd.to_numeric(samples[column], errors="coerce").to_numpy(dtype=float)
                       for name, column in score_columns(samples).items()}
        self.sample_ids = samples["sample_id"].to_numpy() if "sample_id" in samples.columns else samples.index.to_numpy()
        self.prompt_ids = samples["prompt_id"].to_numpy() if "prompt_id" in samples.columns else None
        self.tasks = sorted(samples["task"].dropna().unique().tolist()) if "task" in samples.columns else []
        texts = samples[text_column].astype(str).tolist()
        self.texts = texts
        tokens = [tokenize(t) for t in texts]
        self._ngram_ids, self._ngram_rows, self._vocab_sizes = {}, {}, {}
        for n in (1, 2, 3):
            vocabulary: dict = {}
            ids, rows = [], []
            for row, toks in enumerate(tokens):
                for gram in ngrams(toks, n):
                    ids.append(vocabulary.setdefault(gram, len(vocabulary)))
                    rows.append(row)
            self._ngram_ids[n] = np.asarray(ids, dtype=np.int64)
            self._ngram_rows[n] = np.asarray(rows, dtype=np.int64)
            self._vocab_sizes[n] = len(vocabulary)
        self._bytes = [t.encode("utf-8") for t in texts]
        self._order = np.random.default_rng(seed).permutation(self.n)
        self.compression_sample = compression_sample
        self.embeddings = None  # unit-normalised rows (cosine dedup and Vendi read them)
        if embeddings is not None:
            x = np.asarray(embeddings, dtype=np.float64)
            if len(x) != self.n:
                raise InputDataError(f"{len(x)} embeddings for {self.n} samples.", "Pass one embedding per row.")
            self.embeddings = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            self._gram = np.zeros((x.shape[1], x.shape[1]))
        self._mask = np.zeros(self.n, dtype=bool)

    def select(self, policy: SelectionPolicy | dict, labels: dict[str, str] | None = None,
               source: str = "LiveSelection") -> Selection:
        """The Selection `accept(samples, policy, labels=labels)` returns, from the cached arrays."""
        policy = SelectionPolicy.from_dict(policy)
        check_inputs(policy, list(self.scores), self.n, self.prompt_ids is not None, self.embeddings)
        mask, reason, counts = apply_policy(policy, self.scores, self.n, self.prompt_ids, self.texts,
                                            self.embeddings, self.sample_ids, labels)
        return Selection(mask=mask, rejected_by=reason, sample_ids=self.sample_ids,
                         params=selection_params(policy, labels, self.tasks, source), counts=counts)

    def mask_for(self, thresholds: dict[str, float]) -> np.ndarray:
        """The accepted mask of a thresholds-only policy."""
        return self.select(SelectionPolicy(thresholds=dict(thresholds))).mask

    def distinct(self, mask: np.ndarray, n: int) -> float:
        selected = mask[self._ngram_rows[n]]
        total = int(selected.sum())
        if total == 0:
            return 0.0
        return int(np.count_nonzero(np.bincount(self._ngram_ids[n][selected], minlength=self._vocab_sizes[n]))) / total

    def compression_ratio(self, mask: np.ndarray) -> float:
        chosen = self._order[mask[self._order]][: self.compression_sample]
        raw = b"\n".join(self._bytes[i] for i in chosen)
        return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0)) if raw else 0.0

    def vendi(self, mask: np.ndarray) -> float:
        if self.embeddings is None:
            return float("nan")
        added, removed = mask & ~self._mask, self._mask & ~mask
        if added.any():
            self._gram += self.embeddings[added].T @ self.embeddings[added]
        if removed.any():
            self._gram -= self.embeddings[removed].T @ self.embeddings[removed]
        self._mask = mask.copy()
        count = int(mask.sum())
        if count == 0:
            return 0.0
        eigenvalues = np.linalg.eigvalsh(self._gram / count)
        eigenvalues = eigenvalues[eigenvalues > 1e-12]
        return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))

    def update(self, thresholds: dict[str, float], mask: np.ndarray | None = None) -> dict:
        """Mask and summary for these thresholds (or for a mask computed elsewhere, e.g. by `select`)."""
        mask = self.mask_for(thresholds) if mask is None else np.asarray(mask, dtype=bool)
        return {"mask": mask, "n_accepted": int(mask.sum()), "accept_rate": float(mask.mean()) if self.n else 0.0,
                **{f"distinct_{n}": self.distinct(mask, n) for n in (1, 2, 3)},
                "compression_ratio": self.compression_ratio(mask), "vendi_embedding": self.vendi(mask)}
