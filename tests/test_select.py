"""Acceptance policies, each checked against an independent computation."""
import numpy as np
import pandas as pd
import pytest

from workbench import Run
from workbench.errors import InputDataError
from workbench.select import accept, exact_duplicates, near_duplicates_embedding, near_duplicates_minhash, thresholds_for


@pytest.fixture
def graded(make_graded):  # tests/conftest.py
    return make_graded(200, seed=0, nan_judge=[3, 50, 120])


def test_thresholds_and_nan(graded):
    selection = accept(graded, thresholds={"judge": 0.5, "verifier": 1.0})
    expected = (graded["score__judge"] >= 0.5) & (graded["score__verifier"] >= 1.0)
    assert np.array_equal(selection.mask, expected.to_numpy())
    assert selection.counts["nan"]["judge"] == 3
    assert set(selection.rejected_by[[3, 50, 120]]) == {"nan:judge"}
    low_judge = (graded["score__judge"] < 0.5).to_numpy()
    assert set(selection.rejected_by[low_judge]) == {"threshold:judge"}  # first failing rule is recorded
    assert selection.accept_rate == pytest.approx(expected.mean())


def test_target_rate_top1_cap(graded):
    rate = accept(graded, thresholds={"judge": 0.0}, target_rate=0.25)
    valid = graded["score__judge"].dropna()
    assert rate.n_accepted == int(0.25 * len(valid))
    assert graded.loc[rate.mask, "score__judge"].min() >= valid.sort_values(ascending=False).iloc[rate.n_accepted - 1]
    top1 = accept(graded, thresholds={"judge": 0.0}, top1_of_k=True)
    best = graded.dropna(subset=["score__judge"]).groupby("prompt_id")["score__judge"].idxmax()
    assert set(np.flatnonzero(top1.mask)) == set(best)
    cap = accept(graded, thresholds={"judge": 0.3}, per_prompt_cap=2)
    assert graded[cap.mask].groupby("prompt_id").size().max() <= 2
    passing = graded[graded["score__judge"] >= 0.3].groupby("prompt_id").size().clip(upper=2).sum()
    assert cap.n_accepted == passing


def test_empty_selection_is_valid_with_a_message(graded):
    selection = accept(graded, thresholds={"judge": 2.0})
    assert selection.n_accepted == 0 and selection.accepted_rows(graded).empty
    assert "threshold:judge" in selection.message and "Lower" in selection.message


def test_bad_input(graded):
    with pytest.raises(InputDataError, match="Unknown grader"):
        accept(graded, thresholds={"nonexistent": 0.5})
    with pytest.raises(InputDataError, match="finite"):
        accept(graded, thresholds={"judge": float("nan")})
    with pytest.raises(InputDataError, match="target_rate"):
        accept(graded, target_rate=1.5)
    with pytest.raises(InputDataError, match="embedding"):
        accept(graded, dedup="embedding")


def test_dedup_variants():
    texts = ["The cat sat on the mat today", "the cat sat on the mat today!", "A completely different sentence here",
             "The cat sat on the mat today and then slept", "A completely different sentence here too"]
    assert list(exact_duplicates(texts)) == [False, True, False, False, False]
    near = near_duplicates_minhash(texts, threshold=0.5)
    assert near[1] and not near[0] and not near[2]
    emb = np.array([[1, 0], [1, 0.01], [0, 1], [0.7, 0.7]], dtype=float)
    assert list(near_duplicates_embedding(emb, 0.99)) == [False, True, False, False]
    frame = pd.DataFrame({"sample_id": list("abcde"), "completion": texts, "score__judge": [0.1, 0.9, 0.5, 0.5, 0.5]})
    selection = accept(frame, thresholds={"judge": 0.0}, dedup="exact")
    # best-first: the higher-scored copy (b) is kept, the other (a) rejected
    assert list(selection.mask) == [False, True, True, True, True] and selection.rejected_by[0] == "dedup:exact"


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(1000)]
    base = list(rng.choice(words, 200))
    variant = base[:150] + list(rng.choice(words, 50))
    from workbench.select import minhash_signatures

    signatures = minhash_signatures([" ".join(base), " ".join(variant)], num_perm=256)
    shingles = [{" ".join(t[i:i + 3]) for i in range(len(t) - 2)} for t in (base, variant)]
    jaccard = len(shingles[0] & shingles[1]) / len(shingles[0] | shingles[1])
    assert abs((signatures[0] == signatures[1]).mean() - jaccard) < 0.1


def test_schedule_and_save(graded, tmp_path):
    assert thresholds_for({"judge": [0.5, 0.6, 0.7]}, 5) == {"judge": 0.7}
    assert thresholds_for({"judge": {"start": 0.5, "step": 0.1, "max": 0.65}}, 1) == {"judge": pytest.approx(0.6)}
    assert thresholds_for({"judge": {"start": 0.5, "step": 0.1, "max": 0.65}}, 3) == {"judge": 0.65}
    run = Run(tmp_path / "r")
    selection = accept(graded, thresholds={"judge": 0.5})
    selection.save(run, generation=0)
    import json

    import pyarrow.parquet as pq

    table = pq.read_table(run.path / "gen-000" / "selections" / "all.parquet")  # no task column: "all"
    assert json.loads(table.schema.metadata[b"workbench_selection"])["policy"]["thresholds"] == {"judge": 0.5}
    assert table.to_pandas()["accepted"].sum() == selection.n_accepted
