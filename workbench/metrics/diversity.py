"""Diversity of a set of texts: one small function per metric, `f(texts, knob=default) -> float`.

Lexical metrics work on a simple, fixed tokenization (lowercased words and punctuation marks, see
`tokenize`) so numbers are comparable across runs and models; embedding metrics take an array
(rows = texts) from any sentence encoder. Higher means more diverse, except where a docstring says
otherwise (compression ratio, self-repetition, self-BLEU and homogenization measure *sameness*).

Empty input: lexical metrics over no n-grams return 0.0 (nothing diverse was said), except the
sameness metrics, which return 0.0 as well; `diversity_report` says how many texts it saw.
"""
from __future__ import annotations

import gzip
import math
import random
import re
from collections import Counter
from typing import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def tokenize(text: str) -> list[str]:
    """Lowercased words and single punctuation marks: 'Hello, world!' -> ['hello', ',', 'world', '!']."""
    return _TOKEN.findall(str(text).lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def _all_ngrams(texts: Iterable[str], n: int) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for text in texts:
        out.extend(ngrams(tokenize(text), n))
    return out


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Distinct-n: unique n-grams / all n-grams over the whole set, in [0, 1] (Li et al., 2016,
    "A Diversity-Promoting Objective Function for Neural Conversation Models")."""
    grams = _all_ngrams(texts, n)
    return len(set(grams)) / len(grams) if grams else 0.0


def ngram_entropy(texts: Sequence[str], n: int = 2) -> float:
    """Shannon entropy (bits) of the set's n-gram frequency distribution (as in Zhang et al., 2018,
    "Generating Informative and Diverse Conversational Responses via Adversarial Information Maximization")."""
    counts = np.array(list(Counter(_all_ngrams(texts, n)).values()), dtype=np.float64)
    if counts.size == 0:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def compression_ratio(texts: Sequence[str], level: int = 9) -> float:
    """Bytes of the texts joined by newlines / bytes after gzip; >= ~1, *higher = more repetitive*
    (Shaib et al., 2024, "Standardizing the Measurement of Text Diversity"). gzip at `level`, mtime 0."""
    raw = "\n".join(map(str, texts)).encode("utf-8")
    if not raw:
        return 0.0
    return len(raw) / len(gzip.compress(raw, compresslevel=level, mtime=0))


def self_repetition(texts: Sequence[str], n: int = 4) -> float:
    """Self-repetition score, *higher = more repetitive* (Salkar et al., 2022, "Self-Repetition in
    Abstractive Neural Summarizers"; as used by Shaib et al., 2024): for each text, the log of 1 + the
    number of (n-gram, other text) pairs where one of its n-grams also occurs in another text; averaged."""
    sets = [set(ngrams(tokenize(t), n)) for t in texts]
    if not sets:
        return 0.0
    document_frequency = Counter(g for s in sets for g in s)
    scores = [math.log(1 + sum(document_frequency[g] - 1 for g in s)) for s in sets]
    return float(np.mean(scores))


def _bleu(hypothesis: list[str], reference: list[str], max_n: int = 4, epsilon: float = 0.1) -> float:
    """Sentence BLEU with one reference, uniform weights, brevity penalty; a zero n-gram match count is
    replaced by `epsilon` (Chen & Cherry 2014, smoothing method 1, as nltk's SmoothingFunction().method1)."""
    if not hypothesis:
        return 0.0
    log_precision = 0.0
    for n in range(1, max_n + 1):
        hyp, ref = Counter(ngrams(hypothesis, n)), Counter(ngrams(reference, n))
        total = sum(hyp.values())
        if total == 0:
            return 0.0  # hypothesis shorter than n: BLEU-4 undefined, count as no overlap
        matched = sum(min(c, ref[g]) for g, c in hyp.items())
        log_precision += math.log((matched or epsilon) / total) / max_n
    brevity = 1.0 if len(hypothesis) > len(reference) else math.exp(1 - len(reference) / len(hypothesis))
    return brevity * math.exp(log_precision)


def self_bleu(texts: Sequence[str], n_pairs: int = 1000, max_n: int = 4, seed: int = 0) -> dict:
    """Self-BLEU, *higher = more similar* (Zhu et al., 2018, "Texygen"): mean BLEU-`max_n` of one text
    against another, over `n_pairs` random ordered pairs (all pairs when fewer), with a 95% normal CI.

    Texygen scores each text against all others as references; sampling single-reference pairs keeps the
    cost linear and gives an unbiased estimate of the pairwise mean, hence the interval.
    """
    tokens = [tokenize(t) for t in texts]
    n = len(tokens)
    if n < 2:
        return {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0, "pairs": 0}
    all_pairs = n * (n - 1)
    if all_pairs <= n_pairs:
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
    else:
        rng = random.Random(seed)
        pairs = []
        while len(pairs) < n_pairs:
            i, j = rng.randrange(n), rng.randrange(n)
            if i != j:
                pairs.append((i, j))
    scores = np.array([_bleu(tokens[i], tokens[j], max_n) for i, j in pairs])
    half = 1.96 * scores.std(ddof=1) / math.sqrt(len(scores)) if len(scores) > 1 else 0.0
    if len(pairs) == all_pairs:
        half = 0.0  # every pair was scored: the mean is exact
    return {"mean": float(scores.mean()), "ci_low": float(scores.mean() - half),
            "ci_high": float(scores.mean() + half), "pairs": len(pairs)}


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def vendi_from_features(features: np.ndarray, q: float = 1.0) -> float:
    """Vendi score of the cosine-similarity kernel of `features`, by the dual form.

    Vendi = exp(entropy of the eigenvalues of K / n), K = X X^T with unit rows (Friedman & Dieng,
    2023, "The Vendi Score"). The non-zero eigenvalues of X X^T / n equal those of X^T X / n, a d x d
    matrix, so the cost is O(n d^2) instead of O(n^3). Between 1 (all identical) and n (orthogonal).
    """
    x = _normalize_rows(features)
    n = x.shape[0]
    if n == 0:
        return 0.0
    eigenvalues = np.linalg.eigvalsh(x.T @ x / n) if x.shape[1] < n else np.linalg.eigvalsh(x @ x.T / n)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    if q == 1.0:
        return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))
    if math.isinf(q):
        return float(1.0 / eigenvalues.max())
    return float(np.exp(np.log((eigenvalues ** q).sum()) / (1 - q)))


def vendi_score(embeddings: np.ndarray, q: float = 1.0) -> float:
    """Vendi score over sentence embeddings (cosine kernel); see `vendi_from_features`.

    Matches the `vendi-score` package (0.0.3) to 1e-6 for q=1; for other orders it matches its
    `score_K`, not its `score_X`, which passes q=1 whatever q it is given (a bug we do not copy)."""
    return vendi_from_features(np.asarray(embeddings), q=q)


def ngram_count_matrix(texts: Sequence[str], n: int = 2):
    """Exact sparse count matrix [texts, distinct n-grams] (scipy CSR)."""
    from scipy.sparse import csr_matrix

    vocabulary: dict[tuple[str, ...], int] = {}
    indptr, indices, data = [0], [], []
    for text in texts:
        counts = Counter(vocabulary.setdefault(g, len(vocabulary)) for g in ngrams(tokenize(text), n))
        indices.extend(counts.keys())
        data.extend(counts.values())
        indptr.append(len(indices))
    return csr_matrix((np.array(data, dtype=np.float64), indices, indptr), shape=(len(texts), max(len(vocabulary), 1)))


def ngram_vendi(texts: Sequence[str], n: int = 2, max_texts: int = 2000, seed: int = 0) -> float:
    """Vendi score with the cosine kernel over n-gram count vectors (Friedman & Dieng, 2023, use n-gram
    kernels for text), exact: sparse Gram matrix, eigenvalues of the t x t kernel.

    Above `max_texts` texts it is computed on a seeded random sample of `max_texts` of them (the t^3
    eigen-decomposition would take minutes at 10,000). Vendi counts "effectively distinct items", so it
    grows with set size: compare sets at the same size, which this cap also ensures for large sets.
    """
    texts = list(texts)
    if len(texts) == 0:
        return 0.0
    if len(texts) > max_texts:
        pick = np.sort(np.random.default_rng(seed).choice(len(texts), size=max_texts, replace=False))
        texts = [texts[i] for i in pick]
    x = ngram_count_matrix(texts, n)
    norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
    x = x.multiply(1.0 / np.where(norms == 0, 1.0, norms)[:, None]).tocsr()
    eigenvalues = np.linalg.eigvalsh((x @ x.T).toarray() / len(texts))
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    return float(np.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def homogenization(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over all pairs i != j of embeddings, *higher = more homogeneous*
    (the embedding analogue of Shaib et al., 2024's homogenization score; O(n d) via the sum vector)."""
    x = _normalize_rows(np.asarray(embeddings))
    n = x.shape[0]
    if n < 2:
        return 0.0
    total = x.sum(axis=0)
    return float((total @ total - (x * x).sum()) / (n * (n - 1)))


def diversity_report(texts: Sequence[str], embeddings: np.ndarray | None = None, self_bleu_pairs: int = 1000,
                     seed: int = 0) -> dict:
    """Every metric above in one dict (embedding metrics only when `embeddings` is given)."""
    texts = [str(t) for t in texts]
    report = {"n_texts": len(texts), "mean_words": float(np.mean([len(tokenize(t)) for t in texts])) if texts else 0.0}
    for n in (1, 2, 3):
        report[f"distinct_{n}"] = distinct_n(texts, n)
    report["entropy_2"] = ngram_entropy(texts, 2)
    report["compression_ratio"] = compression_ratio(texts)
    report["self_repetition_4"] = self_repetition(texts, 4)
    bleu = self_bleu(texts, n_pairs=self_bleu_pairs, seed=seed)
    report.update({"self_bleu": bleu["mean"], "self_bleu_ci_low": bleu["ci_low"], "self_bleu_ci_high": bleu["ci_high"]})
    report["vendi_ngram"] = ngram_vendi(texts) if texts else 0.0
    if embeddings is not None:
        embeddings = np.asarray(embeddings)
        if len(embeddings) != len(texts):
            from ..errors import InputDataError

            raise InputDataError(f"{len(embeddings)} embeddings for {len(texts)} texts.",
                                 "Pass one embedding row per text, in the same order.")
        report["vendi_embedding"] = vendi_score(embeddings)
        report["homogenization"] = homogenization(embeddings)
    return report
