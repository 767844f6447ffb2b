"""The threshold explorer, driven like a user drives it: set values, read what it shows."""
import numpy as np
import pandas as pd
import pytest

from workbench import Run
from workbench.metrics import diversity as dv
from workbench.widgets import ThresholdExplorer


@pytest.fixture
def graded(make_graded):  # tests/conftest.py
    return make_graded(400, seed=7, heuristics=True)


def test_sliders_update_mask_figures_and_summary(graded):
    explorer = ThresholdExplorer(graded, embeddings=np.random.default_rng(0).normal(size=(len(graded), 8)))
    widget = explorer.widget  # builds the FigureWidgets
    assert set(explorer.thresholds) == {"judge", "heuristics"}  # the verifier is the audit's reference
    explorer._ui["sliders"]["judge"].value = 0.6  # what dragging the slider does
    explorer.set_thresholds(heuristics=0.7)
    expected = ((graded["score__judge"] >= 0.6) & (graded["score__heuristics"] >= 0.7)).to_numpy()
    assert np.array_equal(explorer.accepted_mask, expected)
    summary = explorer.summary()
    assert summary["n_accepted"] == expected.sum() and summary["accept_rate"] == pytest.approx(expected.mean())
    accepted_texts = graded.loc[expected, "completion"].tolist()
    assert summary["diversity_accepted"]["distinct_2"] == pytest.approx(dv.distinct_n(accepted_texts, 2))
    histogram = explorer._ui["histograms"]["judge"]
    assert len(histogram.data[0].x) == expected.sum() and len(histogram.data[1].x) == (~expected).sum()
    assert histogram.layout.shapes[0].x0 == 0.6
    assert f"<b>{expected.sum()}</b> of 400" in explorer._ui["count"].value
    audit = summary["audit"]["judge"]
    assert 0 <= audit["roc_auc"] <= 1
    assert widget is explorer.widget


def test_bad_values_show_a_message_and_change_nothing(graded):
    explorer = ThresholdExplorer(graded)
    explorer.widget
    before = explorer.accepted_mask.copy()
    for bad in (float("nan"), 5.0, None):
        assert explorer.set_thresholds(judge=bad) is False
        assert explorer.message and np.array_equal(explorer.accepted_mask, before)
    assert "outside the scores' range" in explorer._ui["message"].value or "give a number" in explorer._ui["message"].value
    assert explorer.set_thresholds(nonexistent=0.5) is False
    explorer.set_thresholds(judge=explorer.ranges["judge"][1], heuristics=explorer.ranges["heuristics"][1])
    explorer.set_thresholds(judge=explorer.ranges["judge"][1] - 1e-12)
    high = explorer.summary()
    assert high["n_accepted"] <= 1
    explorer.set_mode("target_rate", target_rate=0.0)
    assert explorer.summary()["n_accepted"] == 0 and "No sample passes" in explorer.message
    assert explorer.set_mode("nonsense") is False


def test_policies(graded):
    explorer = ThresholdExplorer(graded)
    explorer.set_thresholds(judge=0.2)
    explorer.set_mode("top1_of_k")
    accepted = graded[explorer.accepted_mask]
    assert accepted["prompt_id"].is_unique
    explorer.set_mode("target_rate", target_rate=0.25)
    assert explorer.summary()["n_accepted"] == int(0.25 * (graded["score__judge"] >= 0.2).sum())
    explorer.set_mode("thresholds", dedup="exact")
    texts = graded.loc[explorer.accepted_mask, "completion"].str.lower()
    assert texts.is_unique


def test_human_labels_override_store_and_audit(graded, tmp_path):
    run = Run(tmp_path / "r")
    explorer = ThresholdExplorer(graded, run=run, reviewer="ada")
    explorer.set_thresholds(judge=0.5)
    rejected = graded.index[~explorer.accepted_mask][0]
    accepted = graded.index[explorer.accepted_mask][0]
    explorer.label(graded.loc[rejected, "sample_id"], "good")
    explorer.label(graded.loc[accepted, "sample_id"], "bad")
    assert explorer.accepted_mask[rejected] and not explorer.accepted_mask[accepted]
    assert explorer.rejected_by(accepted) == "human:bad"
    labels = run.read("labels")
    assert list(labels["label"]) == ["good", "bad"] and set(labels["reviewer"]) == {"ada"} and labels["time"].notna().all()
    agreement = explorer.summary()["human_agreement"]["judge"]
    assert agreement["n"] == 2 and agreement["agreement"] == 0.0  # the human disagreed with the judge twice
    # a new explorer on the same run sees the labels
    again = ThresholdExplorer(graded, run=run)
    again.set_thresholds(judge=0.5)
    assert again.accepted_mask[rejected] and not again.accepted_mask[accepted]
    message = explorer.save_selection()
    assert "Saved" in message
    assert "gen-000/selections/all.parquet" in message  # keyed: the rows have no task column
    saved = pd.read_parquet(run.selection_path(0, "all"))
    assert saved["accepted"].sum() == explorer.accepted_mask.sum()
    assert saved.loc[saved["sample_id"] == graded.loc[accepted, "sample_id"], "rejected_by"].item() == "human:bad"


def test_graded_table_from_run(tmp_path, graded):
    run = Run(tmp_path / "r")
    run.append("samples", graded.drop(columns=[c for c in graded if c.startswith("score__")]))
    run.append("scores/judge", pd.DataFrame({"sample_id": graded["sample_id"], "score": graded["score__judge"]}))
    table = run.graded()
    assert np.allclose(table["score__judge"], graded["score__judge"])
    explorer = ThresholdExplorer(run=run)
    assert explorer.graders == ["judge"]


def test_stored_judge_bias_probes_show_in_the_audit_panel(tmp_path, graded):
    run = Run(tmp_path / "r")
    run.append("samples", graded.drop(columns=[c for c in graded if c.startswith("score__")]))
    run.append("scores/judge", pd.DataFrame({"sample_id": graded["sample_id"], "score": graded["score__judge"]}))
    probes = pd.DataFrame([{"probe": "verbosity_bias", "measure": "mean score change", "estimate": 0.061,
                            "ci_low": 0.058, "ci_high": 0.063, "n": 16, "ci_method": "bootstrap", "warning": None}])
    run.write_frame(0, "probes_judge", probes)
    explorer = ThresholdExplorer(run=run)
    explorer.widget
    assert explorer.summary()["probes"]["judge"][0]["estimate"] == pytest.approx(0.061)
    panel = explorer._ui["audit"].value
    assert "wb-probes" in panel and "verbosity_bias" in panel and "[0.058, 0.063]" in panel
