"""The main job at smoke size on the real embedded model: every stage runs and leaves its files. The demo runs
once per session (the `demo_smoke` fixture in conftest.py); tests/test_browser.py opens its reports offline."""
from workbench.demo import main
from workbench.select import Selection
from workbench.store import Run


def test_demo_smoke(demo_smoke, tmp_path, capsys):
    out = demo_smoke.stdout
    for needle in ("== generate arithmetic", "== judge audit", "ROC AUC", "diversity: all samples vs accepted",
                   "== run summary", "== self-learning loop", "== gen 1:", "== report"):
        assert needle in out
    # the loop fine-tuned once and evaluated both models; the report rendered notebooks 01, 03 and 04 from this run
    demo = demo_smoke.run_dir
    assert (demo / "loop" / "verifier" / "gen-001" / "checkpoint" / "config.json").exists()
    htmls = sorted(p.name for p in (demo / "report").glob("*.html"))
    assert htmls == ["01_generate.html", "03_thresholds.html", "04_self_learning_loop.html"]
    assert htmls == sorted(p.name for p in demo_smoke.paths)
    for name in ("01_generate", "03_thresholds"):
        executed = (demo / "report" / "executed" / f"{name}.ipynb").read_text()
        assert '"output_type": "error"' not in executed, name
    run = Run(demo)
    samples = run.read("samples")
    assert len(samples) == 16 and samples["sample_id"].is_unique
    assert run.selections(0) == ["arithmetic+instructions+corpus"]  # one combined selection, keyed by its tasks
    selection = Selection.load(run, 0)
    assert set(selection.sample_ids) == set(samples["sample_id"])
    # its saved policies reproduce it from the run's graded table
    again = selection.reapply(run.graded())
    assert set(again.sample_ids[again.mask]) == set(selection.sample_ids[selection.mask])
    for grader in ("verifier", "judge", "perplexity", "heuristics", "realism", "novelty_vs_seeds"):
        assert len(run.read(f"scores/{grader}")) > 0, grader
    # `workbench export` of the demo run round-trips through datasets.load_from_disk with the selection's rows
    import datasets

    from workbench import cli

    assert cli.main(["export", str(run.path), "--format", "datasets", str(tmp_path / "export")]) == 0
    exported = datasets.load_from_disk(str(tmp_path / "export"))
    assert exported["sample_id"] == [str(i) for i in selection.sample_ids[selection.mask]]
    assert exported.to_pandas().equals(selection.to_dataset(run, 0).to_pandas())
    card = (tmp_path / "export" / "README.md").read_text()
    assert "| judge | verifier |" in card and "arithmetic+instructions+corpus" in card
    assert str(tmp_path) not in card and str(demo.parent) not in card
    # a second run reuses everything: no new parts, no new ledger entries for generation or grading
    parts_before = sorted(p.name for p in run.path.rglob("part-*.parquet"))
    ledger_before = len(run.ledger())
    assert main(smoke=True, run_dir=demo, write_report=False) == 0
    assert "== report" not in capsys.readouterr().out
    assert sorted(p.name for p in run.path.rglob("part-*.parquet")) == parts_before
    assert len(run.ledger()) == ledger_before
