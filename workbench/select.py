"""Acceptance policies: which graded samples a generation learns from.

    selection = accept(samples, thresholds={"judge": 0.6, "verifier": 1.0}, dedup="minhash")
    selection.accept_rate, selection.accepted(samples), selection.rejected_by

Rules run in a fixed order and the first rule that rejects a row is recorded for it:
missing score (NaN) -> threshold (per grader, AND; a row passes when score >= threshold) ->
target rate -> top-1-of-K per prompt (RAFT) -> per-prompt cap (ReST-EM) -> dedup.
A threshold schedule (ReST) is `thresholds_for(schedule, generation)`. An empty selection is a valid
result: `selection.message` says which rule emptied it and how to loosen it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputDataError

SCORE_PREFIX = "score__"


def score_column(name: str) -> str:
    return name if name.startswith(SCORE_PREFIX) else SCORE_PREFIX + name


def thresholds_for(schedule: dict[str, Any], generation: int) -> dict[str, float]:
    """A threshold schedule over generations (ReST, Gulcehre et al. 2023): per grader, either a list
    (one threshold per generation, the last repeats) or {"start": a, "step": b, "max": c}."""
    out = {}
    for name, rule in schedule.items():
        if isinstance(rule, (list, tuple)):
            out[name] = float(rule[min(generation, len(rule) - 1)])
        elif isinstance(rule, dict):
            value = rule["start"] + rule.get("step", 0.0) * generation
            out[name] = float(min(value, rule.get("max", value)))
        else:
            out[name] = float(rule)
    return out


@dataclass
class Selection:
    """The outcome of `accept`: a mask over the input rows, why each rejected row was rejected, and the
    parameters that produced it (so a saved selection can be reproduced)."""

    mask: np.ndarray                       # True = accepted, one per input row, in input order
    rejected_by: np.ndarray                # "" for accepted rows, else the first rule that rejected the row
    sample_ids: np.ndarray                 # the rows' sample_id (or index) values
    params: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)  # rows rejected per rule, NaN scores per grader

    @property
    def n_accepted(self) -> int:
        return int(self.mask.sum())

    @property
    def accept_rate(self) -> float:
        return float(self.mask.mean()) if len(self.mask) else 0.0

    @property
    def message(self) -> str:
        if len(self.mask) == 0:
            return "No samples to select from."
        if self.n_accepted:
            return f"Accepted {self.n_accepted} of {len(self.mask)} samples ({100 * self.accept_rate:.1f}%)."
        worst = max(self.counts.get("rejected_by", {}).items(), key=lambda kv: kv[1], default=("?", 0))[0]
        return (f"No sample was accepted out of {len(self.mask)}: the rule '{worst}' rejected the most. "
                "Lower that threshold, raise the target rate, or turn off dedup to accept some.")

    def accepted(self, samples: pd.DataFrame) -> pd.DataFrame:
        return samples[self.mask].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": self.sample_ids, "accepted": self.mask, "rejected_by": self.rejected_by})

    def save(self, run, generation: int = 0) -> None:
        """Write `selection.parquet` (with the parameters as JSON in its metadata) into the generation folder."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .store import arrow_table, atomic_write_bytes

        table = arrow_table(self.to_frame(), {b"workbench_selection": self.params})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        atomic_write_bytes(run.path / f"gen-{generation:03d}" / "selection.parquet", buffer.getvalue().to_pybytes())


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", str(text).lower()))


def exact_duplicates(texts: list[str]) -> np.ndarray:
    """True for each text whose normalized form (lowercase words) appeared earlier in the list."""
    seen: set[str] = set()
    out = np.zeros(len(texts), dtype=bool)
    for i, text in enumerate(texts):
        key = _normalized(text)
        out[i] = key in seen
        seen.add(key)
    return out


def minhash_signatures(texts: list[str], num_perm: int = 64, shingle: int = 3, seed: int = 0) -> np.ndarray:
    """MinHash signatures [n, num_perm] of word `shingle`-grams (Broder, 1997): the fraction of equal
    entries of two signatures estimates the Jaccard similarity of their shingle sets."""
    import zlib

    rng = np.random.default_rng(seed)
    prime = np.uint64((1 << 61) - 1)
    a = rng.integers(1, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    b = rng.integers(0, (1 << 61) - 1, size=num_perm, dtype=np.uint64)
    signatures = np.full((len(texts), num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
    for row, text in enumerate(texts):
        words = _normalized(text).split()
        grams = {" ".join(words[i:i + shingle]) for i in range(max(1, len(words) - shingle + 1))}
        hashes = np.array([zlib.crc32(g.encode()) for g in grams], dtype=np.uint64)
        with np.errstate(over="ignore"):
            # (a*h + b) mod p: h < 2^32 and a < 2^61 overflow uint64, but the wrap is a fixed bijection per
            # permutation, which is all MinHash needs (a family of random hash functions)
            values = (hashes[:, None] * a[None, :] + b[None, :]) % prime
        signatures[row] = values.min(axis=0)
    return signatures


def near_duplicates_minhash(texts: list[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16,
                            seed: int = 0) -> np.ndarray:
    """True for each text whose estimated Jaccard similarity to an *earlier kept* text is >= threshold.
    Candidate pairs come from LSH banding (`bands` bands of num_perm/bands rows), then are verified
    on the full signature."""
    signatures = minhash_signatures(texts, num_perm=num_perm, seed=seed)
    rows = num_perm // bands
    buckets: dict[tuple, list[int]] = {}
    duplicate = np.zeros(len(texts), dtype=bool)
    for i in range(len(texts)):
        keys = [(band, signatures[i, band * rows:(band + 1) * rows].tobytes()) for band in range(bands)]
        candidates = {j for key in keys for j in buckets.get(key, [])}
        if any((signatures[i] == signatures[j]).mean() >= threshold for j in candidates):
            duplicate[i] = True
            continue
        for key in keys:
            buckets.setdefault(key, []).append(i)
    return duplicate


def near_duplicates_embedding(embeddings: np.ndarray, threshold: float = 0.95) -> np.ndarray:
    """True for each row whose cosine similarity to an earlier kept row is >= threshold (greedy)."""
    x = np.asarray(embeddings, dtype=np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    duplicate = np.zeros(len(x), dtype=bool)
    kept: list[int] = []
    for i in range(len(x)):
        if kept and (x[kept] @ x[i]).max() >= threshold:
            duplicate[i] = True
        else:
            kept.append(i)
    return duplicate


def accept(samples: pd.DataFrame, thresholds: dict[str, float] | None = None, target_rate: float | None = None,
           rank_by: str | None = None, top1_of_k: bool = False, per_prompt_cap: int | None = None,
           dedup: str | None = None, dedup_threshold: float | None = None, embeddings: np.ndarray | None = None,
           text_column: str = "completion") -> Selection:
    """Select rows of a graded samples table; see the module docstring for the order of rules.

    thresholds: {grader name or score column: minimum score}. target_rate: keep this fraction of the
    rows still standing, best by `rank_by` (a grader; default: the first thresholded grader).
    top1_of_k: keep only the best row per prompt_id. per_prompt_cap: at most this many per prompt_id.
    dedup: None | "exact" | "minhash" | "embedding" (needs `embeddings`), applied best-first.
    """
    thresholds = dict(thresholds or {})
    n = len(samples)
    columns = {name: score_column(name) for name in thresholds}
    if rank_by is not None:
        columns.setdefault(rank_by, score_column(rank_by))
    missing = [c for c in columns.values() if c not in samples.columns]
    if missing:
        available = [c[len(SCORE_PREFIX):] for c in samples.columns if c.startswith(SCORE_PREFIX)]
        raise InputDataError(f"Unknown grader(s) {[m[len(SCORE_PREFIX):] for m in missing]}: no column "
                             f"{missing} in the samples.", f"Use one of the graded columns: {available}, or grade first.")
    for name, value in thresholds.items():
        if value is None or not np.isfinite(float(value)):
            raise InputDataError(f"Threshold for {name!r} is {value!r}.", "Give every threshold a finite number.")
    if target_rate is not None and not 0 <= target_rate <= 1:
        raise InputDataError(f"target_rate must be in [0, 1], got {target_rate}.", "Use e.g. 0.3 for 30%.")
    if dedup not in (None, "exact", "minhash", "embedding"):
        raise InputDataError(f"Unknown dedup {dedup!r}.", "Use None, 'exact', 'minhash' or 'embedding'.")
    if dedup == "embedding" and (embeddings is None or len(embeddings) != n):
        raise InputDataError("dedup='embedding' needs one embedding per sample.", "Pass embeddings=... (n rows).")
    if (top1_of_k or per_prompt_cap) and "prompt_id" not in samples.columns:
        raise InputDataError("top1_of_k / per_prompt_cap need a prompt_id column.", "Select on generate()'s output.")

    mask = np.ones(n, dtype=bool)
    reason = np.full(n, "", dtype=object)
    counts: dict[str, Any] = {"nan": {}}

    def reject(rows: np.ndarray, rule: str) -> None:
        newly = mask & rows
        reason[newly] = rule
        mask[newly] = False

    for name, column in columns.items():
        isnan = samples[column].isna().to_numpy() | ~np.isfinite(pd.to_numeric(samples[column], errors="coerce").to_numpy(dtype=float))
        counts["nan"][name] = int(isnan.sum())
        reject(isnan, f"nan:{name}")
    for name, value in thresholds.items():
        scores = pd.to_numeric(samples[columns[name]], errors="coerce").to_numpy(dtype=float)
        reject(~(scores >= value), f"threshold:{name}")

    rank_name = rank_by or next(iter(thresholds), None)
    rank = (pd.to_numeric(samples[columns[rank_name]], errors="coerce").to_numpy(dtype=float)
            if rank_name else np.zeros(n))
    rank = np.where(np.isnan(rank), -np.inf, rank)
    order = np.lexsort((np.arange(n), -rank))  # best first, ties by input order (stable, reproducible)

    if target_rate is not None:
        standing = order[mask[order]]
        keep = int(np.floor(target_rate * len(standing) + 1e-9))
        drop = np.zeros(n, dtype=bool)
        drop[standing[keep:]] = True
        reject(drop, "target_rate")
    if top1_of_k or per_prompt_cap:
        cap = 1 if top1_of_k else int(per_prompt_cap)
        taken: dict[Any, int] = {}
        drop = np.zeros(n, dtype=bool)
        prompt_ids = samples["prompt_id"].to_numpy()
        for i in order:
            if mask[i]:
                taken[prompt_ids[i]] = taken.get(prompt_ids[i], 0) + 1
                drop[i] = taken[prompt_ids[i]] > cap
        reject(drop, "top1_of_k" if top1_of_k else "per_prompt_cap")
    if dedup:
        standing = order[mask[order]]
        texts = samples[text_column].astype(str).to_numpy()[standing].tolist()
        if dedup == "exact":
            duplicate = exact_duplicates(texts)
        elif dedup == "minhash":
            duplicate = near_duplicates_minhash(texts, threshold=dedup_threshold or 0.8)
        else:
            duplicate = near_duplicates_embedding(np.asarray(embeddings)[standing], threshold=dedup_threshold or 0.95)
        drop = np.zeros(n, dtype=bool)
        drop[standing[duplicate]] = True
        reject(drop, f"dedup:{dedup}")

    counts["rejected_by"] = {rule: int((reason == rule).sum()) for rule in dict.fromkeys(reason[~mask])}
    params = {"thresholds": thresholds, "target_rate": target_rate, "rank_by": rank_name, "top1_of_k": top1_of_k,
              "per_prompt_cap": per_prompt_cap, "dedup": dedup, "dedup_threshold": dedup_threshold}
    ids = samples["sample_id"].to_numpy() if "sample_id" in samples.columns else samples.index.to_numpy()
    return Selection(mask=mask, rejected_by=reason.astype(str), sample_ids=ids, params=params, counts=counts)


def combine(selections: dict[str, Selection]) -> Selection:
    """One selection over several tables (e.g. one per task), in the given order; params keyed by name."""
    parts = list(selections.values())
    counts: dict[str, Any] = {"rejected_by": {}}
    for part in parts:
        for rule, count in part.counts.get("rejected_by", {}).items():
            counts["rejected_by"][rule] = counts["rejected_by"].get(rule, 0) + count
    return Selection(mask=np.concatenate([p.mask for p in parts]) if parts else np.zeros(0, bool),
                     rejected_by=np.concatenate([p.rejected_by for p in parts]) if parts else np.zeros(0, str),
                     sample_ids=np.concatenate([p.sample_ids for p in parts]) if parts else np.zeros(0),
                     params={name: p.params for name, p in selections.items()}, counts=counts)
