"""The run store: atomic parts, manifest, ledger, config guard."""
import pandas as pd
import pytest

from workbench.errors import InputDataError, RunConfigError
from workbench.store import Run


def test_append_read_manifest(tmp_path):
    run = Run(tmp_path / "r")
    run.append("samples", pd.DataFrame({"sample_id": ["a", "b"], "x": [1, 2]}))
    run.append("samples", pd.DataFrame({"sample_id": ["c"], "x": [3]}))
    assert run.append("samples", pd.DataFrame()) is None
    assert [p.name for p in run.parts("samples")] == ["part-00000.parquet", "part-00001.parquet"]
    assert list(run.read("samples")["x"]) == [1, 2, 3]
    assert run.sample_ids() == {"a", "b", "c"}
    table = run.manifest["tables"]["gen-000/samples"]
    assert table["rows"] == 3 and [p["rows"] for p in table["parts"]] == [2, 1]
    assert run.read("scores").empty


def test_stale_temp_files_removed_on_open(tmp_path):
    run = Run(tmp_path / "r")
    run.append("samples", pd.DataFrame({"sample_id": ["a"]}))
    stale = run.table_dir("samples") / ".part-00001.parquet.tmp-123"
    stale.write_bytes(b"half a part")
    Run(run.path)
    assert not stale.exists() and len(Run(run.path).read("samples")) == 1


def test_corrupt_part_names_the_file(tmp_path):
    run = Run(tmp_path / "r")
    run.append("samples", pd.DataFrame({"sample_id": ["a"]}))
    (run.table_dir("samples") / "part-00001.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputDataError, match="part-00001.parquet"):
        run.read("samples")


def test_ledger_skips_a_cut_line(tmp_path):
    run = Run(tmp_path / "r")
    run.log("generate", items=3, seconds=1.5)
    with open(run.path / "ledger.jsonl", "a") as handle:
        handle.write('{"stage": "generate", "ite')  # killed mid-write
    run.log("generate", items=2, seconds=1.0)
    ledger = run.ledger()
    assert list(ledger["items"]) == [3, 2]


def test_a_kill_between_a_part_and_its_ledger_line_loses_no_accounting(tmp_path, monkeypatch):
    run = Run(tmp_path / "r")
    run.append("samples", pd.DataFrame({"sample_id": ["a", "b"]}), log=dict(stage="generate", items=2))
    run.append("scores/judge", pd.DataFrame({"sample_id": ["a"]}), log=dict(stage="grade", items=1))
    run.append("labels", pd.DataFrame({"sample_id": ["a"]}))  # a part without a ledger line of its own

    def killed(self, entry):
        raise KeyboardInterrupt  # the part is in place, the ledger line never written

    monkeypatch.setattr(Run, "_write_ledger_line", killed)
    with pytest.raises(KeyboardInterrupt):
        run.append("samples", pd.DataFrame({"sample_id": ["c", "d", "e"]}), log=dict(stage="generate", items=3))
    monkeypatch.undo()
    assert len(run.read("samples")) == 5  # the part landed
    ledger = Run(run.path).ledger()
    assert list(ledger["items"]) == [2, 1, 3]  # each chunk once: the lost line restored from its part
    assert list(ledger["stage"]) == ["generate", "grade", "generate"]
    assert ledger["restored"].fillna(False).tolist() == [False, False, True]
    assert list(ledger["part"]) == ["gen-000/samples/part-00000.parquet", "gen-000/scores/judge/part-00000.parquet",
                                    "gen-000/samples/part-00001.parquet"]
    assert (run.path / "ledger.jsonl").read_text().count("\n") == 2  # reading did not write


def test_config_guard(tmp_path):
    run = Run(tmp_path / "r")
    run.check_config("generate:x", {"model": "m", "n": 3})
    run.check_config("generate:x", {"model": "m", "n": 3})
    run.check_config("generate:y", {"model": "other"})
    with pytest.raises(RunConfigError, match=r"n: run has 3, now 4"):
        Run(run.path).check_config("generate:x", {"model": "m", "n": 4})
    assert Run(run.path).config["generate:x"] == {"model": "m", "n": 3}
