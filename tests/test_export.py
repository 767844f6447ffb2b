"""`workbench export` and `Selection.to_dataset`: the accepted samples (or stored preference pairs) of a run as a
dataset with a card, on a copy of the committed old_run fixture (6 samples, a saved selection, human labels)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workbench import cli
from workbench.export import export
from workbench.select import Selection, accept
from workbench.store import Run

FIXTURES = Path(__file__).parent / "fixtures"
SECRET = "correct-horse-battery-staple"  # no key-shaped pattern: only the key's name can give it away


@pytest.fixture
def run(tmp_path) -> Run:
    """A copy of old_run whose generate settings also carry an API key (it must not reach the card)."""
    shutil.copytree(FIXTURES / "old_run", tmp_path / "old_run")
    config_file = tmp_path / "old_run" / "config.yaml"
    config = yaml.safe_load(config_file.read_text())
    config["generate:arithmetic:gen-000"]["backend_options"] = {"api_key": SECRET, "api_key_env": "OPENAI_API_KEY"}
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    return Run(tmp_path / "old_run")


def accepted_ids(run: Run, generation: int = 0, name: str | None = None) -> list[str]:
    selection = Selection.load(run, generation, name)
    return [str(i) for i in selection.sample_ids[selection.mask]]


def expected_rows(run: Run, ids: list[str]) -> pd.DataFrame:
    """The run's own graded rows of `ids`, in that order."""
    return run.graded(0).set_index("sample_id").loc[ids].reset_index()


def read_card(folder: Path) -> tuple[dict, str]:
    text = (folder / "README.md").read_text()
    _, front, body = text.split("---\n", 2)
    return yaml.safe_load(front), body


def test_to_dataset_holds_the_selections_accepted_rows(run):
    selection = Selection.load(run, 0)
    dataset = selection.to_dataset(run, generation=0)
    ids = accepted_ids(run)
    assert dataset["sample_id"] == ids and len(ids) == 5
    want = expected_rows(run, ids)
    assert dataset["prompt"] == want["prompt"].tolist() and dataset["completion"] == want["completion"].tolist()
    assert dataset["task"] == ["arithmetic"] * 5
    np.testing.assert_allclose(dataset["score__heuristics"], want["score__heuristics"])
    np.testing.assert_allclose(dataset["score__verifier"], want["score__verifier"])
    labels = run.labels(0)
    assert dataset["human_label"] == [labels.get(i, "") for i in ids]
    assert "bad" in dataset["human_label"]  # the fixture labelled an accepted sample 'bad' after saving


def test_datasets_format_round_trips_through_load_from_disk(run, tmp_path):
    import datasets

    out = tmp_path / "exports" / "arith"
    assert cli.main(["export", str(run.path), "--format", "datasets", str(out)]) == 0
    loaded = datasets.load_from_disk(str(out))
    in_memory = Selection.load(run, 0).to_dataset(run, 0)
    assert loaded.column_names == in_memory.column_names
    assert loaded.to_pandas().equals(in_memory.to_pandas())
    assert (out / "README.md").exists()
    assert not list(out.parent.glob(".arith.export-*"))  # the staging folder was renamed, nothing left beside it


@pytest.mark.parametrize("format,read", [("jsonl", lambda p: pd.read_json(p, lines=True)), ("parquet", pd.read_parquet)])
def test_jsonl_and_parquet_round_trip(run, tmp_path, format, read):
    out = tmp_path / format
    assert cli.main(["export", str(run.path), "--format", format, str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", f"train.{format}"]
    frame = read(out / f"train.{format}")
    ids = accepted_ids(run)
    want = expected_rows(run, ids)
    assert frame["sample_id"].tolist() == ids
    assert frame["completion"].tolist() == want["completion"].tolist()
    np.testing.assert_allclose(frame["score__heuristics"], want["score__heuristics"])


def test_the_card_front_matter_is_what_datasets_reads(run, tmp_path):
    """load_dataset on the exported folder finds the data file through the card's `configs`."""
    import datasets

    out = tmp_path / "pq"
    export(run, out, format="parquet")
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "cache"))
    assert list(loaded) == ["train"] and loaded["train"]["sample_id"] == accepted_ids(run)


def test_card_reports_thresholds_accept_rate_and_provenance_from_the_run(run, tmp_path):
    out = tmp_path / "card"
    assert cli.main(["export", str(run.path), "--format", "parquet", str(out)]) == 0
    meta, body = read_card(out)
    selection = Selection.load(run, 0)
    policy = selection.policy["arithmetic"]  # the fixture's combined-shape selection: one part
    block = meta["workbench"]
    assert block["policy"]["arithmetic"]["thresholds"] == policy.thresholds == {"heuristics": 0.9}
    assert block["accept_rate"] == pytest.approx(selection.accept_rate, abs=1e-6) and block["rows"] == 5
    assert "heuristics >= 0.9" in body and f"**Accept rate: {100 * selection.accept_rate:.1f}%** (5 of 6" in body
    generate = run.config["generate:arithmetic:gen-000"]
    # model and sampling: dtype, quantize, engine, n_per_prompt, temperature, top_p, top_k, max_new_tokens, seed
    assert f"| arithmetic | {generate['model']} | float32 |  | fast | 2 | 0.8 | 0.95 | 50 | 8 | 0 |" in body
    for needle in ("## Judge audit", "| heuristics | verifier |", "## Human labels", "| exported | 0 | 1 |",
                   "## Diversity: all vs accepted", "distinct_2", "## Seeds", "seed 0", "Verifier", "Heuristics"):
        assert needle in body, needle
    assert block["command"] == "workbench export old_run --format parquet card"
    assert meta["size_categories"] == ["n<1K"] and meta["configs"][0]["data_files"][0]["path"] == "train.parquet"
    # shareable: no path of this machine, no key
    text = (out / "README.md").read_text()
    for private in (str(tmp_path), str(Path.cwd()), str(Path.home()) + "/", SECRET):
        assert private not in text, private
    assert "OPENAI_API_KEY" in text  # the name of the variable is not a secret


def test_no_selection_is_a_clear_error_and_writes_nothing(run, tmp_path, capsys):
    run.selection_path(0).unlink()
    out = tmp_path / "out"
    assert cli.main(["export", str(run.path), "--format", "parquet", str(out)]) == 2
    err = capsys.readouterr().err
    assert "no saved selection" in err and "workbench demo" in err and "03_thresholds" in err
    assert not out.exists() and not list(tmp_path.glob(".out.export-*"))


def test_existing_output_is_refused_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert cli.main(["export", str(run.path), "--format", "jsonl", str(out)]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert cli.main(["export", str(run.path), "--format", "jsonl", "--overwrite", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "train.jsonl"]
    # an empty folder is fine without --overwrite; the run folder itself never is an output
    (tmp_path / "empty").mkdir()
    assert cli.main(["export", str(run.path), "--format", "jsonl", str(tmp_path / "empty")]) == 0
    assert cli.main(["export", str(run.path), "--format", "jsonl", "--overwrite", str(run.path)]) == 2
    assert "run folder" in capsys.readouterr().err and (run.path / "config.yaml").exists()


def test_a_failed_write_leaves_the_output_as_it_was(run, tmp_path, monkeypatch):
    import workbench.export as export_module

    def half_write(dataset, folder, format):
        (folder / "train.parquet").write_bytes(b"half")
        raise KeyboardInterrupt  # as if killed mid-write

    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("previous export")
    monkeypatch.setattr(export_module, "write_data", half_write)
    with pytest.raises(KeyboardInterrupt):
        export(run, out, format="parquet", overwrite=True)
    assert [p.name for p in out.iterdir()] == ["old.txt"] and not list(tmp_path.glob(".out.export-*"))
    with pytest.raises(KeyboardInterrupt):
        export(run, tmp_path / "fresh", format="parquet")
    assert not (tmp_path / "fresh").exists()


def test_several_selections_task_filter_and_selection_choice(run, tmp_path, capsys):
    graded = run.graded(0)
    strict = accept(graded, thresholds={"verifier": 1.0})
    strict.save(run, 0, name="strict")
    assert cli.main(["export", str(run.path), "--format", "parquet", str(tmp_path / "a")]) == 2
    assert "--selection" in capsys.readouterr().err
    assert cli.main(["export", str(run.path), "--selection", "strict", "--task", "arithmetic", "--format", "parquet",
                     str(tmp_path / "b")]) == 0
    frame = pd.read_parquet(tmp_path / "b" / "train.parquet")
    assert frame["sample_id"].tolist() == [str(i) for i in strict.sample_ids[strict.mask]]
    meta, _ = read_card(tmp_path / "b")
    assert meta["workbench"]["policy"] == {"strict": {"thresholds": {"verifier": 1.0}}}
    assert meta["workbench"]["task"] == "arithmetic"
    assert cli.main(["export", str(run.path), "--selection", "strict", "--task", "poetry", "--format", "parquet",
                     str(tmp_path / "c")]) == 2
    assert "No rows of task 'poetry'" in capsys.readouterr().err and not (tmp_path / "c").exists()
    accept(graded, thresholds={"verifier": 2.0}).save(run, 0, name="none")
    assert cli.main(["export", str(run.path), "--selection", "none", "--format", "parquet", str(tmp_path / "d")]) == 2
    assert "accepted no sample" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_stored_preference_pairs_are_exported_instead(run, tmp_path):
    pairs = pd.DataFrame({"prompt": ["What is 2+2?"], "chosen": ["4"], "rejected": ["5"], "task": ["arithmetic"]})
    run.write_frame(0, "pairs", pairs)
    out = tmp_path / "pairs"
    source = export(run, out, format="parquet")
    assert source.kind == "pairs"
    assert pd.read_parquet(out / "train.parquet").equals(pairs)
    meta, body = read_card(out)
    assert meta["workbench"]["kind"] == "pairs" and "preference pairs" in body
    # the accepted samples stay reachable
    assert export(run, tmp_path / "samples", format="parquet", kind="samples").kind == "samples"
    run.write_frame(0, "pairs", pairs.drop(columns="rejected"))
    with pytest.raises(Exception, match=r"lack column\(s\) \['rejected'\]"):
        export(run, tmp_path / "bad", format="parquet")


def test_chat_pairs_are_exported_in_trls_conversational_format(run, tmp_path):
    import datasets

    from workbench.select import pairs

    graded = pd.DataFrame({"sample_id": ["a", "b"], "prompt_id": ["p", "p"], "prompt": ["What is 2+2?"] * 2,
                           "completion": ["4", "5"], "chat": [True, True], "task": ["arithmetic"] * 2,
                           "score__verifier": [1.0, 0.0]})
    pairs(graded, by="verifier").save(run, 0)
    export(run, tmp_path / "ds", format="datasets")
    row = datasets.load_from_disk(str(tmp_path / "ds"))[0]
    assert row["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert row["chosen"] == [{"role": "assistant", "content": "4"}]
    assert row["rejected"] == [{"role": "assistant", "content": "5"}] and row["margin"] == 1.0
