"""Judge audit against sklearn and hand values; the live re-selection against the full metrics."""
import numpy as np
import pandas as pd
import pytest

from workbench.live import LiveSelection
from workbench.metrics import audit
from workbench.metrics import diversity as dv


def test_auc_matches_sklearn_and_handles_ties_and_nan():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    scores = np.round(labels * 0.3 + rng.uniform(size=300), 1)  # many ties
    assert audit.roc_auc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    with_nan = scores.copy()
    with_nan[:10] = np.nan
    assert audit.roc_auc(with_nan, labels) == pytest.approx(roc_auc_score(labels[10:], scores[10:]), abs=1e-12)
    assert np.isnan(audit.roc_auc([0.1, 0.9], [1, 1]))  # one class: undefined, not 0.5


def test_accuracy_kappa_reliability():
    assert audit.accuracy_at([0.2, 0.8, 0.6, 0.4], [0, 1, 0, 1], 0.5) == 0.5
    from sklearn.metrics import cohen_kappa_score

    a, b = np.array([1, 1, 0, 0, 1, 0, 1, 1]), np.array([1, 0, 0, 0, 1, 1, 1, 1])
    assert audit.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b))
    table = audit.reliability_table([0.05, 0.15, 0.95, 0.91], [0, 1, 1, 1], bins=10)
    assert list(table["count"]) == [1, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    # ECE by hand: (1*|0.05-0| + 1*|0.15-1| + 2*|0.93-1|) / 4
    assert table.attrs["ece"] == pytest.approx((0.05 + 0.85 + 2 * 0.07) / 4)
    report = audit.judge_audit([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0])
    assert report["roc_auc"] == 1.0 and report["accuracy_at_threshold"] == 1.0 and report["kappa_at_threshold"] == 1.0
    inflation = audit.score_inflation({0: pd.Series([0.5, 0.5]), 1: pd.Series([0.6, 0.7])})
    assert list(inflation["inflation"].round(6)) == [0.0, 0.15]


@pytest.fixture(scope="module")
def graded():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(400)] + ["the", "a", "of"] * 30
    texts = [" ".join(rng.choice(words, size=rng.integers(5, 40))) for _ in range(3000)]
    frame = pd.DataFrame({"completion": texts, "score__judge": rng.uniform(size=3000),
                          "score__verifier": rng.integers(0, 2, 3000).astype(float)})
    frame.loc[::50, "score__judge"] = np.nan
    return frame, rng.normal(size=(3000, 16))


def test_live_equals_full_metrics(graded):
    frame, embeddings = graded
    live = LiveSelection(frame, embeddings=embeddings, compression_sample=10**9)
    for thresholds in ({"judge": 0.2}, {"judge": 0.7, "verifier": 1.0}, {"judge": 0.5}, {"judge": 1.5}):
        result = live.update(thresholds)
        expected_mask = np.ones(len(frame), bool)
        for name, value in thresholds.items():
            expected_mask &= (frame[f"score__{name}"] >= value).to_numpy()
        assert np.array_equal(result["mask"], expected_mask)
        accepted = frame.loc[expected_mask, "completion"].tolist()
        for n in (1, 2, 3):
            assert result[f"distinct_{n}"] == pytest.approx(dv.distinct_n(accepted, n), abs=1e-12)
        # compression is taken over the accepted texts in the live cache's fixed shuffled order
        shuffled = live._order[expected_mask[live._order]]
        assert result["compression_ratio"] == pytest.approx(
            dv.compression_ratio(frame["completion"].to_numpy()[shuffled].tolist()) if accepted else 0.0, rel=1e-12)
        expected_vendi = dv.vendi_score(embeddings[expected_mask]) if expected_mask.any() else 0.0
        assert result["vendi_embedding"] == pytest.approx(expected_vendi, rel=1e-6)


def test_live_compression_sample_close_to_full(graded):
    frame, _ = graded
    full = LiveSelection(frame, compression_sample=10**9).update({"judge": 0.3})["compression_ratio"]
    sampled = LiveSelection(frame, compression_sample=1000).update({"judge": 0.3})["compression_ratio"]
    accepted = frame.loc[frame["score__judge"] >= 0.3, "completion"].tolist()
    assert full == pytest.approx(dv.compression_ratio(accepted), rel=0.05)  # order barely matters
    assert sampled == pytest.approx(full, rel=0.03)
