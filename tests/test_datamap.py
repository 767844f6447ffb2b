"""The data map: layouts (UMAP and the PCA fallback), colouring, and the explorer's lasso -> label / exclude."""
import shutil

import numpy as np
import pytest

from workbench import Run
from workbench.datamap import color_values, embed_texts, exact_knn, generations_map, pca, project
from workbench.embeddings import embed_lexical
from workbench.errors import InputDataError
from workbench.select import accept
from workbench.widgets import ThresholdExplorer


def clusters(n_per: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated blobs in 384-D (unit-ish vectors like MiniLM's) and their blob ids."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 384)) * 3
    ids = np.repeat(np.arange(3), n_per)
    return (centres[ids] + rng.normal(size=(len(ids), 384)) * 0.3).astype(np.float32), ids


def separated(coords: np.ndarray, ids: np.ndarray) -> bool:
    """Every point is nearer its own blob's centroid than any other blob's (in the 2-D map)."""
    centroids = np.stack([coords[ids == k].mean(axis=0) for k in np.unique(ids)])
    nearest = np.argmin(((coords[:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    return bool((nearest == ids).all())


def test_umap_keeps_clusters_apart_and_is_reproducible_by_seed():
    embeddings, ids = clusters()
    first = project(embeddings, seed=3)
    assert first.method == "umap" and first.note == "" and first.coords.shape == (len(ids), 2)
    assert separated(first.coords, ids)
    assert np.allclose(first.coords, project(embeddings, seed=3).coords)


def test_pca_fallback_small_inputs_and_bad_input():
    embeddings, ids = clusters(n_per=10)
    layout = project(embeddings, method="pca")
    assert layout.method == "pca" and separated(layout.coords, ids)
    # PCA is the top-2 principal subspace: its coordinates' variance equals the top squared singular values / n
    centred = embeddings - embeddings.mean(0)
    singular = np.linalg.svd(centred.astype(np.float64), compute_uv=False)[:2]
    assert np.allclose(layout.coords.var(axis=0) * len(embeddings), singular ** 2, rtol=1e-3)
    few = project(embeddings[:4])  # fewer than 5: PCA with a note, never a UMAP crash
    assert few.method == "pca" and "at least 5" in few.note and few.coords.shape == (4, 2)
    assert project(embeddings[:1]).coords.shape == (1, 2)
    with pytest.raises(InputDataError, match="no samples"):
        project(np.zeros((0, 384)))
    broken = embeddings.copy()
    broken[2, 5] = np.nan
    with pytest.raises(InputDataError, match="NaN"):
        project(broken)
    with pytest.raises(InputDataError, match="Unknown data-map method"):
        project(embeddings, method="tsne")
    assert pca(embeddings[:3], 2).shape == (3, 2)


def test_color_values(make_graded):
    graded = make_graded(40, seed=1).assign(task=["arithmetic", "instructions"] * 20)
    scores, categories = color_values(graded, "judge")
    assert categories is None and np.allclose(scores, graded["score__judge"])
    accepted = graded["score__judge"].to_numpy() > 0.5
    codes, categories = color_values(graded, "status", accepted)
    assert categories == ["rejected", "accepted"] and np.array_equal(codes == 1, accepted)
    codes, categories = color_values(graded, "human", labels={"s0": "good", "s1": "exclude"})
    assert [categories[int(c)] for c in codes[:3]] == ["good", "exclude", "unlabelled"]
    codes, categories = color_values(graded, "task")
    assert categories == ["arithmetic", "instructions"] and codes[1] == 1
    with pytest.raises(InputDataError, match="Cannot colour"):
        color_values(graded, "nonsense")


def test_lasso_labels_and_excludes_through_the_run(make_graded, tmp_path):
    graded = make_graded(120, seed=2)
    run = Run(tmp_path / "run")
    embeddings, _ = clusters()
    explorer = ThresholdExplorer(graded, run=run, embeddings=embeddings)
    explorer.widget  # embeddings given: the map tab is drawn at once
    figure = explorer._ui["map"]
    assert len(figure.data[0].x) == len(graded) and figure.layout.dragmode == "lasso"
    before = explorer.accepted_mask.copy()
    assert explorer.select_on_map([]) is False and len(explorer.map_selected) == 0  # an empty lasso: nothing happens
    picked = np.flatnonzero(before)[:5]
    assert explorer.select_on_map(picked) and "5 picked" in explorer._ui["map_picked"].value
    assert explorer.label_map_selection("exclude")
    stored = run.labels()
    assert {stored[graded["sample_id"][i]] for i in picked} == {"exclude"}
    assert not explorer.accepted_mask[picked].any()
    assert (explorer.accepted_mask | np.isin(np.arange(len(graded)), picked)).sum() == before.sum()
    assert {explorer.rejected_by(i) for i in picked} == {"human:exclude"}
    # the saved selection reproduces the exclusion through select.accept, like any other label
    again = accept(graded, explorer.policy, labels=run.labels())
    assert np.array_equal(again.mask, explorer.accepted_mask)
    # 'exclude' is no quality verdict: the human-agreement audit ignores it
    assert "human_agreement" not in explorer.summary() or explorer.summary()["human_agreement"]["judge"]["n"] == 0
    explorer.set_map_color("human")
    codes = np.asarray(figure.data[0].marker.color)
    assert (codes[picked] == 3).all()  # 'exclude' is category 3 of unlabelled/good/bad/exclude
    assert explorer.label_map_selection(None) and not set(run.labels())
    assert np.array_equal(explorer.accepted_mask, before)
    assert explorer.set_map_color("nonsense") is False and "Cannot colour" in explorer.message
    with pytest.raises(InputDataError, match="Unknown human label"):
        run.add_labels({"s0": "meh"})


def test_map_recolours_with_the_sliders(make_graded):
    graded = make_graded(80, seed=3)
    explorer = ThresholdExplorer(graded, embeddings=clusters(n_per=27)[0][:80])
    explorer.widget
    explorer.set_thresholds(judge=0.5)
    colors = np.asarray(explorer._ui["map"].data[0].marker.color)
    assert np.array_equal(colors == 1, explorer.accepted_mask)


def test_generations_map_on_the_old_run(tmp_path):
    """Two generations of a committed run (tests/fixtures/old_run) on one MiniLM + UMAP layout."""
    from pathlib import Path

    source = Path(__file__).parent / "fixtures" / "old_run"
    shutil.copytree(source, tmp_path / "run")
    run = Run(tmp_path / "run")
    points = generations_map(run)
    sizes = {g: len(run.samples(g)) for g in run.generations()}
    assert points.groupby("generation").size().to_dict() == sizes
    assert points[["x", "y"]].notna().all().all() and points.attrs["map"]["method"] in ("umap", "pca")
    from workbench import viz

    figure = viz.data_map(points, color="generation")
    assert len(figure.data) == len(sizes)
    with pytest.raises(InputDataError, match="No samples to map"):
        generations_map(run, task="no-such-task")


def test_lexical_embedding():
    """Character n-gram TF-IDF + seeded SVD: unit rows of the asked width, the same for a seed, and texts that
    share their words closer than unrelated ones; fewer texts than dimensions and empty texts work too."""
    rng = np.random.default_rng(0)
    topics = [["the", "cat", "sat", "on", "mat", "purred", "kitten", "whiskers"],
              ["stock", "market", "prices", "fell", "shares", "investors", "trading", "bonds"],
              ["compile", "python", "function", "loop", "variable", "syntax", "error", "module"]]
    texts = [" ".join(rng.choice(topics[i % 3], size=12)) for i in range(90)]
    first = embed_lexical(texts, dims=16, seed=1)
    assert first.shape == (90, 16) and first.dtype == np.float32
    assert np.allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(first, embed_lexical(texts, dims=16, seed=1))
    similarity = first @ first.T
    same = np.equal.outer(np.arange(90) % 3, np.arange(90) % 3) & ~np.eye(90, dtype=bool)
    assert similarity[same].min() > similarity[~np.equal.outer(np.arange(90) % 3, np.arange(90) % 3)].max()
    few = embed_lexical(["a cat on a mat", "a cat on the mat", "stock prices fell", ""], dims=64)
    assert few.shape == (4, 64) and np.allclose(np.linalg.norm(few[:3], axis=1), 1.0, atol=1e-5)
    assert not few[3].any()  # an empty text has no n-grams: a zero row, never NaN
    assert few[0] @ few[1] > few[0] @ few[2]
    assert embed_lexical([], dims=8).shape == (0, 8)
    vectors, used = embed_texts(texts, "auto")  # up to LEXICAL_ABOVE_ROWS texts "auto" means MiniLM
    assert used == "minilm" and vectors.shape == (90, 384)
    with pytest.raises(InputDataError, match="Unknown data-map embedding"):
        embed_texts(texts, "bert")


def test_exact_neighbours_for_large_maps(monkeypatch):
    """From UMAP_SMALL_DATA rows (4,096; lowered here to keep the test fast) the map hands UMAP an exact
    neighbour graph (no NN-descent compile): each row's nearest neighbour is itself, and the layout is
    reproducible and keeps clusters apart."""
    from workbench import datamap

    embeddings, ids = clusters()
    indices, distances = exact_knn(embeddings, 5)
    assert indices.dtype == np.int32 and distances.dtype == np.float32 and indices.shape == (len(ids), 5)
    assert np.array_equal(indices[:, 0], np.arange(len(ids))) and np.all(np.diff(distances, axis=1) >= 0)
    assert (ids[indices] == ids[:, None]).all()
    used = []
    monkeypatch.setattr(datamap, "UMAP_SMALL_DATA", 50)
    monkeypatch.setattr(datamap, "exact_knn", lambda values, k: used.append(k) or exact_knn(values, k))
    layout = project(embeddings, seed=0)
    assert used == [15] and layout.method == "umap" and separated(layout.coords, ids)
    assert np.allclose(layout.coords, project(embeddings, seed=0).coords)


def test_generations_map_lexical(tmp_path):
    from pathlib import Path

    shutil.copytree(Path(__file__).parent / "fixtures" / "old_run", tmp_path / "run")
    run = Run(tmp_path / "run")
    points = generations_map(run, embedding="lexical")
    assert len(points) == sum(len(run.samples(g)) for g in run.generations())
    assert points.attrs["map"]["embedding"] == "lexical" and points[["x", "y"]].notna().all().all()
    assert np.allclose(points[["x", "y"]], generations_map(run, embedding="lexical")[["x", "y"]])
    with pytest.raises(InputDataError, match="Unknown data-map embedding"):
        generations_map(run, embedding="bert")
