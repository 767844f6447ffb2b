"""Experiment tracking (workbench/tracking.py): a tiny loop with `track:` on logs every generation's metrics
and the fine-tune's loss curve to trackio's store, read back here from that store's own SQLite file and
compared with the run's metrics.json / train_history.jsonl; a resumed loop logs a complete run again; off,
trackio is never imported; a bad `track:` option is refused by its path."""
import importlib.util
import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from workbench.errors import InputDataError
from workbench.loop import LoopConfig, history, run

# the `track` extra (and `dev`, which CI installs); found, not imported: trackio reads its store folder at import
pytestmark = pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio is not installed")


def tiny_tracked(model_dir, run_dir, store, **changes):
    values = dict(run=str(run_dir), model=str(model_dir), task="arithmetic", task_params={"n": 4}, generations=1,
                  generate={"n_per_prompt": 2, "max_new_tokens": 8}, graders=["verifier", "heuristics"],
                  select={"thresholds": {"heuristics": 0.0}}, train={"max_steps": 4, "tokens_per_batch": 32},
                  eval={"heldout_problems": 4, "heldout_texts": 2, "diversity_prompts": 2, "diversity_tokens": 8},
                  track={"project": "tiny", "dir": str(store)})
    values.update(changes)
    return values


def logged(store: Path, project: str) -> dict:
    """{(run id, run name): [(step, metrics dict), ...]} straight from trackio's SQLite file, in log order."""
    runs: dict = {}
    with sqlite3.connect(store / f"{project}.db") as db:
        rows = db.execute("SELECT run_id, run_name, step, metrics FROM metrics ORDER BY id")
        for run_id, name, step, metrics in rows:
            runs.setdefault((run_id, name), []).append((step, json.loads(metrics)))
    return runs


def test_off_imports_nothing():
    """Off (the default), the loop's, finetune's and the experiments' hooks run without importing trackio.
    In a fresh interpreter: this test session imports trackio elsewhere."""
    code = """if True:
        import sys
        from workbench import tracking
        from workbench.loop import LoopConfig
        config = LoopConfig()
        assert not config.track.enabled and "track" not in config.to_record()
        with tracking.start(config.track, "x") as tracker:
            tracker.log_generation(None, 0)
            tracker.log_train_step({"loss": 1.0})
            assert tracking.with_training(None) is None
        sys.path.insert(0, "experiments")
        import common
        assert common.parse("", []).track is None
        assert "trackio" not in sys.modules, "trackio imported with tracking off"
    """
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_loop_logs_generations_and_loss_curve_to_trackio(tiny_model_dir, tmp_path):
    store = tmp_path / "tracking"
    values = tiny_tracked(tiny_model_dir, tmp_path / "run", store)
    said = []
    frame = run(values, say=said.append)
    assert any("tracking: trackio project 'tiny'" in line for line in said)

    runs = logged(store, "tiny")
    assert [name for _, name in runs] == ["run"]  # one tracker run, named after the run folder
    rows = next(iter(runs.values()))
    by_generation = {m["generation"]: (step, m) for step, m in rows if "generation" in m}
    assert sorted(by_generation) == [0, 1]
    for generation, (step, metrics) in by_generation.items():
        assert step == generation
        stored = json.loads((tmp_path / "run" / f"gen-{generation:03d}" / "metrics.json").read_text())
        for key in ("accuracy_strict", "heldout_perplexity", "diversity_distinct_2"):
            assert metrics[key] == pytest.approx(stored["eval"][key], rel=1e-12)
        expected = frame[frame["generation"] == generation].iloc[0]
        for key, value in metrics.items():  # every logged value is the run's own (history's flattened row)
            if key != "generation":
                assert value == pytest.approx(float(expected[key]), rel=1e-12), key
        assert metrics["collapsed"] == int(stored["collapse"]["collapsed"])
    data = json.loads((tmp_path / "run" / "gen-000" / "metrics.json").read_text())["data"]
    assert by_generation[0][1]["accept_rate"] == pytest.approx(data["accept_rate"])
    assert by_generation[0][1]["samples"] == data["samples"] == 8
    assert "accept_rate" not in by_generation[1][1]  # the last generation is evaluated only: no gaps logged

    # the fine-tune's curve: one row per optimizer step, the checkpoint's own history (which pandas wrote
    # with 10 significant digits: the tracker holds the exact floats)
    curve = [(step, m) for step, m in rows if "train/loss" in m]
    steps = [json.loads(line) for line in
             (tmp_path / "run" / "gen-001" / "checkpoint" / "train_history.jsonl").read_text().splitlines()]
    assert len(curve) == len(steps) == data["train"]["steps"] > 1
    assert [s for s, _ in curve] == list(range(1, len(steps) + 1))
    assert [m["train/loss"] for _, m in curve] == pytest.approx([s["loss"] for s in steps], rel=1e-9)
    assert [m["train/lr"] for _, m in curve] == pytest.approx([s["lr"] for s in steps], rel=1e-9)
    assert {m["train/generation"] for _, m in curve} == {0}

    # trackio's own API sees the run and its config (the loop's record)
    import trackio

    (tracked,) = list(trackio.Api().runs("tiny"))
    assert tracked.name == "run" and tracked.config["task_params"] == {"n": 4}

    # a rerun (everything read back) is not refused for tracking settings and logs a complete new tracker run,
    # replaying the finished fine-tune's curve from its checkpoint
    run(values, say=lambda _: None)
    again = logged(store, "tiny")
    assert len(again) == 2
    first, second = again.values()
    replayed = [(s, m) for s, m in second if "train/loss" in m]
    assert [s for s, _ in replayed] == [s for s, _ in curve]
    assert [m["train/loss"] for _, m in replayed] == pytest.approx([m["train/loss"] for _, m in curve], rel=1e-9)
    assert [m for _, m in second if "generation" in m] == [m for _, m in first if "generation" in m]
    assert history(tmp_path / "run").equals(frame)


def test_experiments_track_flag_tracks_every_arm_and_seed(tmp_path):
    """`--track [PROJECT]` on an experiment script: one tracker run per (arm, seed), grouped by arm; the arms'
    run records (what a resume compares) stay as they were."""
    from workbench.experiments import label_free_configs, seed_configs
    from workbench.tracking import track_experiment

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
    import common

    assert common.parse("", ["--track"]).track == "" and common.parse("", ["--track", "lf"]).track == "lf"
    configs = seed_configs(label_free_configs, tmp_path, [0, 1], smoke=True)
    records = {s: {a: c.to_record() for a, c in arms.items()} for s, arms in configs.items()}
    track_experiment(configs, project="lf")
    for seed, arms in configs.items():
        for arm, config in arms.items():
            assert (config.track.project, config.track.name, config.track.group) == ("lf", f"{arm}/seed-{seed}", arm)
            assert config.to_record() == records[seed][arm]
    with pytest.raises(InputDataError, match=r"track\.project"):
        track_experiment(configs, project="label free")


def test_bad_track_options_say_what_is_wrong(tmp_path):
    with pytest.raises(InputDataError, match=r"track\.backend: 'mlflow' is not supported.*backend: trackio"):
        LoopConfig.from_dict({"track": {"project": "p", "backend": "mlflow"}})
    with pytest.raises(InputDataError, match=r"track\.project: 'my project' is not a usable project name"):
        LoopConfig.from_dict({"track": {"project": "my project"}})
    with pytest.raises(InputDataError, match=r"track\.projct: unknown key"):
        LoopConfig.from_dict({"track": {"projct": "p"}})
    with pytest.raises(InputDataError, match=r"track: expected a mapping"):
        LoopConfig.from_dict({"track": "p"})


def test_values_that_are_not_finite_numbers_are_left_out():
    from workbench.tracking import _scalars

    assert _scalars({"a": 1, "b": 0.5, "c": None, "d": math.nan, "e": "text", "f": True}) == {"a": 1, "b": 0.5, "f": 1}
