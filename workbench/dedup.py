"""Duplicate detection for selection: exact (normalised words), MinHash near-duplicates (Broder, 1997)
and embedding near-duplicates. Each marks the rows that repeat an earlier kept row, so callers pass
texts best-first and keep the best-scored copy."""
from __future__ import annotations

import re

import numpy as np


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
