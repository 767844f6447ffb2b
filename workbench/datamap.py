"""The data map: every sample as a point in 2-D, close to the samples whose text means the same thing.

Sentence embeddings (MiniLM, `workbench.embeddings.embed`) or, for a large cold map, fast lexical ones
(character n-gram TF-IDF + SVD, `workbench.embeddings.embed_lexical`: seconds at 10,000 texts where MiniLM
takes minutes on 2 cores) are laid out with UMAP (McInnes et al. 2018, `umap-learn`, seeded) or, when
umap-learn is not installed or there are too few samples for a neighbour graph, with PCA. The explorer
shows the map as a tab (colour by any grader, accepted/rejected, human label, task or generation; lasso to
label or exclude), and notebooks 04/05 put several generations on one map: where the samples go as a model
trains on its own output is the picture of collapse.

    layout = project(embeddings, seed=0)             # MapLayout: coords (n, 2), method, note, seconds
    points = generations_map(run, task="corpus")     # one layout for the samples of every generation
    points = generations_map(run, embedding="lexical")  # the same from character n-grams: seconds, not minutes
    viz.data_map(points, color="generation")
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .errors import InputDataError
from .store import HUMAN_LABELS, score_column, score_columns

MIN_UMAP_SAMPLES = 5  # below this UMAP's neighbour graph is degenerate: PCA, with a note
PCA_BEFORE_UMAP = 50  # UMAP on 50 principal components instead of 384 dimensions: same map, ~2x faster
LARGE_MAP_ROWS = 2_000  # above this, 200 optimisation epochs instead of 500
# From UMAP_SMALL_DATA rows (below it umap-learn computes all distances itself) up to EXACT_KNN_MAX_ROWS, the
# neighbour graph is an exact brute-force search (scikit-learn, 0.2 s at 10,000 x 50) handed to UMAP as
# precomputed_knn: umap-learn's own NN-descent (pynndescent) costs ~25 s of numba compiling in every new
# process, which made the first 10,000-row map take 29 s instead of 7-8 (benchmarks/bench_explorer.py).
UMAP_SMALL_DATA = 4_096
EXACT_KNN_MAX_ROWS = 20_000
# the texts' embedding: MiniLM (meaning; ~56 texts/s on 2 cores) or lexical (spelling; ~1,500 texts/s)
EMBEDDINGS = ("minilm", "lexical")
LEXICAL_ABOVE_ROWS = 2_000  # embedding="auto": MiniLM up to this many texts, the lexical embedding above


@dataclass
class MapLayout:
    coords: np.ndarray  # (n, 2) float32, one row per input embedding, in input order
    method: str         # "umap" or "pca": what actually made the layout
    note: str = ""      # why the method differs from the one asked for ('' when it does not)
    seconds: float = 0.0  # wall time of the projection (embedding not included)
    embedding: str = ""   # what embedded the texts ("minilm", "lexical"; '' when the caller gave the vectors)


def umap_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is not None


def embed_texts(texts, embedding: str = "minilm", seed: int = 0) -> tuple[np.ndarray, str]:
    """(vectors, name of the embedding used) for a map of `texts`. embedding: "minilm" (sentence meaning,
    `embeddings.embed`), "lexical" (character n-grams, `embeddings.embed_lexical`, seeded) or "auto" (MiniLM
    up to LEXICAL_ABOVE_ROWS texts, lexical above: a cold map of 10,000 texts in seconds, not minutes)."""
    if embedding not in ("auto", *EMBEDDINGS):
        raise InputDataError(f"Unknown data-map embedding {embedding!r}.", "Use 'minilm', 'lexical' or 'auto'.")
    texts = [str(t) for t in texts]
    if embedding == "auto":
        embedding = "lexical" if len(texts) > LEXICAL_ABOVE_ROWS else "minilm"
    if embedding == "lexical":
        from .embeddings import embed_lexical

        return embed_lexical(texts, seed=seed), embedding
    from .embeddings import embed

    return embed(texts), embedding


def exact_knn(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every row (itself first), by brute-force Euclidean distance: (indices
    int32, distances float32), the shapes and dtypes umap-learn's `precomputed_knn` takes."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(values).kneighbors(values)
    return indices.astype(np.int32), distances.astype(np.float32)


def _check(embeddings) -> np.ndarray:
    values = np.asarray(embeddings, dtype=np.float32)
    if values.ndim != 2:
        raise InputDataError(f"The data map needs a 2-D array of embeddings (samples x dimensions), got shape "
                             f"{values.shape}.", "Pass workbench.embeddings.embed(texts).")
    if len(values) == 0:
        raise InputDataError("The data map got no samples.", "Map a run or a table with at least one sample.")
    bad = ~np.isfinite(values).all(axis=1)
    if bad.any():
        raise InputDataError(f"{int(bad.sum())} of {len(values)} embeddings contain NaN or inf (first at row "
                             f"{int(np.argmax(bad))}).", "Recompute them with workbench.embeddings.embed(texts).")
    return values


def pca(values: np.ndarray, components: int = 2) -> np.ndarray:
    """Principal components by SVD of the centred data, each axis' sign fixed (largest loading positive) so
    the same data always gives the same picture. Fewer samples or dimensions than asked: zero-padded."""
    centred = values - values.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred.astype(np.float64), full_matrices=False)
    vt = vt[:components]
    vt *= np.where(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)] < 0, -1.0, 1.0)[:, None]
    out = np.zeros((len(values), components), dtype=np.float32)
    out[:, :len(vt)] = centred @ vt.T
    return out


def project(embeddings, method: str = "auto", seed: int = 0, n_neighbors: int = 15, min_dist: float = 0.1,
            n_epochs: int | None = None) -> MapLayout:
    """2-D coordinates for `embeddings` (n x d). method: "auto" (UMAP when umap-learn is installed and there
    are at least MIN_UMAP_SAMPLES rows, else PCA), "umap" or "pca". UMAP is seeded (`random_state`), which
    makes it single-threaded but reproducible: the same samples give the same map."""
    if method not in ("auto", "umap", "pca"):
        raise InputDataError(f"Unknown data-map method {method!r}.", "Use 'auto', 'umap' or 'pca'.")
    values = _check(embeddings)
    started = time.perf_counter()
    note = ""
    if method in ("auto", "umap") and len(values) < MIN_UMAP_SAMPLES:
        note = f"PCA: UMAP needs at least {MIN_UMAP_SAMPLES} samples, got {len(values)}."
        method = "pca"
    elif method == "auto" and not umap_available():
        note = "PCA: umap-learn is not installed (pip install -e '.[map]' for UMAP)."
        method = "pca"
    elif method == "umap" and not umap_available():
        raise InputDataError("method='umap' needs the umap-learn package.",
                             "pip install -e '.[map]' (or umap-learn), or use method='pca'.")
    if method == "pca":
        return MapLayout(pca(values), "pca", note, time.perf_counter() - started)
    import warnings

    import umap

    reduced = pca(values, PCA_BEFORE_UMAP) if values.shape[1] > PCA_BEFORE_UMAP else values
    if n_epochs is None and len(values) > LARGE_MAP_ROWS:
        n_epochs = 200  # umap-learn's own choice above 10k rows; at 10k it would run 500 (8.0 s vs 3.4 s)
    n_neighbors = min(n_neighbors, len(values) - 1)
    knn = {}
    if UMAP_SMALL_DATA <= len(values) <= EXACT_KNN_MAX_ROWS:
        knn["precomputed_knn"] = (*exact_knn(reduced, n_neighbors), None)
    reducer = umap.UMAP(n_components=2, n_neighbors=n_neighbors, min_dist=min_dist, random_state=seed,
                        n_epochs=n_epochs, init="spectral" if len(values) > 10 else "random", **knn)
    # "n_jobs overridden by setting random_state": that is the point; "precomputed_knn[2] is not an NNDescent
    # object: transform will be unavailable": the map never transforms new points
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        coords = reducer.fit_transform(reduced)
    return MapLayout(np.asarray(coords, dtype=np.float32), "umap", note, time.perf_counter() - started)


def color_options(frame: pd.DataFrame) -> list[str]:
    """What a map of `frame` can be coloured by: its graders, status, human label, and task / generation
    when the frame has them (the explorer's colour menu, and the error for anything else)."""
    return list(score_columns(frame)) + ["status", "human"] + [c for c in ("task", "generation") if c in frame.columns]


def color_values(frame: pd.DataFrame, by: str, accepted: np.ndarray | None = None,
                 labels: dict[str, str] | None = None) -> tuple[np.ndarray, list[str] | None]:
    """What a map colours by, one value per row: (values, categories). A grader (`score__<name>` column)
    gives its scores and categories None (a continuous scale); "status" (accepted/rejected), "human"
    (good/bad/excluded/unlabelled), "task", "generation" or any other column give integer codes into
    `categories`."""
    if score_column(by) in frame.columns:
        return pd.to_numeric(frame[score_column(by)], errors="coerce").to_numpy(dtype=float), None
    if by == "status":
        if accepted is None:
            raise InputDataError("Colouring by status needs the accepted mask.", "Pass accepted=...")
        return np.asarray(accepted, dtype=bool).astype(float), ["rejected", "accepted"]
    if by == "human":
        names = ["unlabelled", *HUMAN_LABELS]
        codes = frame["sample_id"].map(labels or {}).map({n: i for i, n in enumerate(names)}).fillna(0)
        return codes.to_numpy(dtype=float), names
    if by not in frame.columns:
        raise InputDataError(f"Cannot colour the map by {by!r}: no such grader or column.",
                             f"Use one of {color_options(frame)}.")
    codes, categories = pd.factorize(frame[by].astype(str), sort=True)
    return codes.astype(float), [str(c) for c in categories]


def generations_map(run, generations: list[int] | None = None, task: str | None = None,
                    max_per_generation: int = 2000, seed: int = 0, method: str = "auto",
                    embedding: str = "minilm") -> pd.DataFrame:
    """The samples of several generations of a loop run on ONE layout (fitted on all of them together, so
    positions are comparable across generations): columns generation, task, sample_id, text, x, y, and
    `attrs["map"]` the MapLayout's method/note/seconds/embedding. At most `max_per_generation` samples per
    generation (a seeded draw) keep the projection within seconds. embedding: "minilm" (by meaning; the
    default, ~56 texts/s on 2 cores), "lexical" (by spelling, character n-grams: seconds for 10,000 texts)
    or "auto" (lexical above LEXICAL_ABOVE_ROWS texts); see `embed_texts`."""
    if embedding not in ("auto", *EMBEDDINGS):
        raise InputDataError(f"Unknown data-map embedding {embedding!r}.", "Use 'minilm', 'lexical' or 'auto'.")
    generations = run.generations() if generations is None else list(generations)
    frames = []
    for generation in generations:
        samples = run.samples(generation)
        if task is not None and "task" in samples.columns:
            samples = samples[samples["task"] == task]
        if len(samples) > max_per_generation:
            samples = samples.sample(max_per_generation, random_state=seed)
        frames.append(samples.assign(generation=generation))
    points = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if points.empty:
        raise InputDataError(f"No samples to map in generations {generations}" + (f" for task {task!r}" if task else "")
                             + f" of {run.path}.", "Generate samples first (notebook 01 or the loop).")
    vectors, embedding = embed_texts(points["completion"].astype(str).tolist(), embedding, seed=seed)
    layout = project(vectors, method=method, seed=seed)
    layout.embedding = embedding
    out = points[["generation", "sample_id", "completion"] + (["task"] if "task" in points.columns else [])]
    out = out.rename(columns={"completion": "text"}).assign(x=layout.coords[:, 0], y=layout.coords[:, 1])
    out.attrs["map"] = {"method": layout.method, "note": layout.note, "seconds": round(layout.seconds, 2),
                        "embedding": embedding}
    return out
