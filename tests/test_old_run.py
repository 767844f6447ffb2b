"""A run folder written by the workbench before `Run` owned the layout (tests/fixtures/old_run, made by
tests/fixtures/make_old_run.py with commit b04a374) opens, reads and resumes with today's code."""
import json
import shutil
from pathlib import Path

import pytest

from workbench import Run
from workbench.explorer import ExplorerState
from workbench.select import LEGACY_SELECTION, Selection, SelectionPolicy

FIXTURES = Path(__file__).parent / "fixtures"
EXPECTED = json.loads((FIXTURES / "old_run_expected.json").read_text())


@pytest.fixture
def old_run(tmp_path) -> Run:
    shutil.copytree(FIXTURES / "old_run", tmp_path / "old_run")
    return Run(tmp_path / "old_run")


def _files(run: Run) -> dict[str, bytes]:
    return {str(p.relative_to(run.path)): p.read_bytes() for p in sorted(run.path.rglob("*.parquet"))}


def test_old_run_reads_samples_scores_labels_metrics(old_run):
    graded = old_run.graded(0).set_index("sample_id")  # stored in finishing order, not prompt order
    assert sorted(graded.index) == sorted(EXPECTED["sample_ids"])
    for grader, scores in EXPECTED["scores"].items():
        assert graded[f"score__{grader}"].to_dict() == scores, grader
    assert old_run.graders(0) == ["heuristics", "verifier"]
    assert old_run.labels(0) == {row["sample_id"]: row["label"] for row in EXPECTED["labels"]}
    assert old_run.metrics(0)["eval"] == {"heldout_perplexity": 20.0}
    assert old_run.generations() == [0]


def test_old_selection_loads_as_a_policy_and_reapplies_to_the_same_set(old_run):
    assert old_run.selections(0) == [LEGACY_SELECTION]
    selection = Selection.load(old_run, 0)
    # the old accept() recorded the grader it ranked by (the first thresholded one) as rank_by
    assert selection.policy == {"arithmetic": SelectionPolicy(thresholds=EXPECTED["selection"]["thresholds"],
                                                              rank_by="heuristics")}
    accepted = list(selection.sample_ids[selection.mask])
    assert accepted == EXPECTED["selection"]["accepted"] and 0 < len(accepted) < len(EXPECTED["sample_ids"])
    again = selection.reapply(old_run.graded(0))
    assert sorted(again.sample_ids[again.mask]) == sorted(accepted)
    # a new, keyed selection lands beside the old file and leaves it as it was
    before = (old_run.generation_dir(0) / "selection.parquet").read_bytes()
    again.save(old_run, 0, name="again")
    assert old_run.selections(0) == ["again", LEGACY_SELECTION]
    assert (old_run.generation_dir(0) / "selection.parquet").read_bytes() == before


def test_explorer_opens_an_old_run_with_its_labels(old_run):
    state = ExplorerState(run=old_run)
    assert set(state.graders) == {"heuristics", "verifier"} and state.labels == old_run.labels(0)
    good, bad = EXPECTED["labels"][0]["sample_id"], EXPECTED["labels"][1]["sample_id"]
    mask = dict(zip(state.samples["sample_id"], state.accepted_mask))
    assert mask[good] and not mask[bad]


def test_old_run_resumes_without_new_rows(old_run, real_model_dir):
    from workbench import generate, get_task
    from workbench.graders import Heuristics, Verifier, grade

    files, ledger = _files(old_run), len(old_run.ledger())
    prompts = get_task(EXPECTED["task"]["name"], n=EXPECTED["task"]["n"])
    samples = generate(prompts, run=old_run, **EXPECTED["generate"])  # same settings: the config check passes
    assert samples["sample_id"].tolist() == EXPECTED["sample_ids"]
    graded = grade(samples, [Verifier(), Heuristics()], run=old_run)
    assert graded["score__verifier"].tolist() == [EXPECTED["scores"]["verifier"][s] for s in EXPECTED["sample_ids"]]
    assert _files(old_run) == files and len(old_run.ledger()) == ledger  # nothing generated or scored again
    # the manifest now also lists the score tables (the old code listed samples and labels only)
    old_run.refresh_manifest()
    assert set(old_run.manifest["tables"]) == {"gen-000/samples", "gen-000/labels", "gen-000/scores/verifier",
                                              "gen-000/scores/heuristics"}
