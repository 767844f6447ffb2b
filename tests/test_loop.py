"""The self-learning loop: a full run on the tiny model, resume after kill -9 at two stages, config
guards, the collapse monitor; and a short loop on the real model."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from workbench.errors import InputDataError, RunConfigError
from workbench.loop import LoopConfig, history, run
from workbench.metrics.collapse import collapse_flags
from workbench.select import Selection
from workbench.store import Run


def tiny_config(model_dir, run_dir, **changes):
    values = dict(run=str(run_dir), model=str(model_dir), task="arithmetic", task_params={"n": 12},
                  generations=2, generate={"n_per_prompt": 2, "max_new_tokens": 8},
                  graders=["verifier", "judge", "heuristics"], select={"thresholds": {"heuristics": [0.0, 0.1]}},
                  mix={"keep_real": 0.2}, real_examples=20, train={"epochs": 1, "tokens_per_batch": 128},
                  eval={"heldout_problems": 6, "heldout_texts": 4, "diversity_prompts": 4, "diversity_tokens": 8})
    values.update(changes)
    return values


def test_loop_runs_every_stage_and_records_it(tiny_model_dir, tmp_path):
    config = LoopConfig.from_dict(tiny_config(tiny_model_dir, tmp_path / "run"))
    frame = run(config, say=lambda _: None)
    assert frame["generation"].tolist() == [0, 1, 2]
    loop_run = Run(config.run)
    for generation in (0, 1):
        folder = loop_run.path / f"gen-{generation:03d}"
        samples = loop_run.read("samples", generation)
        assert len(samples) == 24 and samples["sample_id"].is_unique
        assert loop_run.selections(generation) == ["arithmetic"]  # gen-00g/selections/arithmetic.parquet
        selection = Selection.load(loop_run, generation).to_frame()
        assert selection["sample_id"].tolist() == samples["sample_id"].tolist()
        training = pd.read_parquet(folder / "train_set.parquet")
        assert (training["source"] == "real").sum() == round(0.2 / 0.8 * selection["accepted"].sum())
        assert (loop_run.path / f"gen-{generation + 1:03d}" / "checkpoint" / "config.json").exists()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert {"eval", "data", "collapse"} <= set(metrics)
        assert metrics["data"]["thresholds"] == {"heuristics": [0.0, 0.1][generation]}  # the schedule applied
        assert metrics["data"]["judge_audit"]["n"] == 24
    # generation 1 sampled from generation 1's model: its samples name the checkpoint
    assert loop_run.read("samples", 1)["model"].iloc[0].endswith("gen-001/checkpoint")
    assert 0 <= frame["accuracy_strict"].min() and frame["heldout_perplexity"].gt(0).all()
    assert frame.loc[0, "cost"] > 0 and frame.loc[2, "samples"] != frame.loc[2, "samples"]  # last: eval only (NaN)
    assert set(frame.columns) >= {"diversity_distinct_2", "accept_rate", "train_last_loss", "collapsed"}
    assert frame.equals(history(config.run))
    stages = set(loop_run.ledger()["stage"])
    assert {"generate", "grade", "loop:eval", "loop:train"} <= stages


def test_rerun_with_other_settings_is_refused(tiny_model_dir, tmp_path):
    values = tiny_config(tiny_model_dir, tmp_path / "run", generations=0)
    run(values, say=lambda _: None)
    with pytest.raises(RunConfigError, match="mix"):
        run({**values, "mix": "replace"}, say=lambda _: None)


def test_bad_configs_say_what_is_wrong(tmp_path):
    with pytest.raises(InputDataError, match="generatoins: unknown key"):
        LoopConfig.from_dict({"generatoins": 3})
    with pytest.raises(InputDataError, match="grader"):
        LoopConfig.from_dict({"graders": ["oracle"]})
    with pytest.raises(InputDataError, match="data-mix"):
        LoopConfig.from_dict({"mix": "keep_everything"})
    (tmp_path / "bad.yaml").write_text("task: [unclosed")
    with pytest.raises(InputDataError, match="not valid YAML"):
        LoopConfig.from_yaml(tmp_path / "bad.yaml")


def test_collapse_monitor_flags_and_stops(tiny_model_dir, tmp_path):
    history_rows = [{"heldout_perplexity": 10.0, "diversity_distinct_2": 0.8},
                    {"heldout_perplexity": 13.0, "diversity_distinct_2": 0.7}]
    flags = collapse_flags(history_rows, max_perplexity_rise=0.25, max_diversity_drop=0.25)
    assert flags["collapsed"] and flags["perplexity_rise"] == pytest.approx(0.3) and len(flags["flags"]) == 1
    assert not collapse_flags(history_rows, max_perplexity_rise=0.5)["collapsed"]
    assert collapse_flags(history_rows, max_perplexity_rise=0.5, max_diversity_drop=0.1)["diversity_drop"] == pytest.approx(0.125)
    # in a loop: a negative limit flags any change, and stop ends the loop after generation 1's evaluation
    values = tiny_config(tiny_model_dir, tmp_path / "run", generations=3,
                         collapse={"max_perplexity_rise": -1.0, "max_diversity_drop": 10, "stop": True})
    frame = run(values, say=lambda _: None)
    assert frame["generation"].tolist() == [0, 1] and frame["collapsed"].tolist() == [False, True]
    assert "stopped" in json.loads((tmp_path / "run" / "gen-001" / "metrics.json").read_text())


def _start(config_path: Path) -> subprocess.Popen:
    env = {**os.environ, "WORKBENCH_PROGRESS": "off"}
    return subprocess.Popen([sys.executable, "-m", "workbench", "loop", str(config_path)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _kill_when(process: subprocess.Popen, condition, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert process.poll() is None, "the loop finished before the kill point"
        assert time.time() < deadline, "the kill point never came"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_kill_minus_9_at_two_stages_then_resume(tiny_model_dir, tmp_path):
    """Killed while generating, then while fine-tuning; each rerun of the same command continues, and the
    finished run has every sample exactly once and the same generation-0 samples as an uninterrupted run."""
    changes = dict(task_params={"n": 24}, generations=1,
                   generate={"n_per_prompt": 4, "max_new_tokens": 48, "batch_size": 4},
                   train={"epochs": 1, "tokens_per_batch": 64})  # ~120 one-row steps: seconds to kill in
    config_path = tmp_path / "loop.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(tiny_model_dir, tmp_path / "killed", **changes)))
    killed = Run(tmp_path / "killed")
    parts = lambda: killed.parts("samples", 0)  # noqa: E731

    process = _start(config_path)
    _kill_when(process, lambda: len(parts()) >= 1)  # generation checkpoints every 8 samples
    rows_at_kill = len(killed.read("samples", 0))
    assert 0 < rows_at_kill < 96, "killed mid-generation"

    process = _start(config_path)
    train_set = tmp_path / "killed" / "gen-000" / "train_set.parquet"
    _kill_when(process, lambda: train_set.exists() and time.sleep(0.5) is None)
    assert not (tmp_path / "killed" / "gen-001" / "checkpoint").exists(), "killed mid-fine-tune"
    assert len(killed.read("samples", 0)) == 96

    done = subprocess.run([sys.executable, "-m", "workbench", "loop", str(config_path)], capture_output=True,
                          text=True, env={**os.environ, "WORKBENCH_PROGRESS": "off"}, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    reference = LoopConfig.from_dict(tiny_config(tiny_model_dir, tmp_path / "reference", **changes))
    run(reference, say=lambda _: None)
    samples = killed.read("samples", 0)
    assert len(samples) == 96 and samples["sample_id"].is_unique
    assert (tmp_path / "killed" / "gen-001" / "checkpoint" / "config.json").exists()
    ours, theirs = (Run(p).read("samples", 0).sort_values("sample_id") for p in (tmp_path / "killed", tmp_path / "reference"))
    assert ours["completion"].tolist() == theirs["completion"].tolist()
    assert ours["sample_id"].tolist() == theirs["sample_id"].tolist()
    assert history(tmp_path / "killed")["generation"].tolist() == [0, 1]
    assert not list((tmp_path / "killed").rglob(".*tmp-*"))


@pytest.mark.real_model
def test_real_model_loop_two_generations(real_model_dir, tmp_path):
    """The embedded model through two fine-tuning rounds on verified arithmetic (smoke size)."""
    values = dict(run=str(tmp_path / "run"), task="arithmetic", task_params={"n": 8, "digits": 1, "operators": "+-*/"},
                  generations=1,
                  generate={"n_per_prompt": 4, "max_new_tokens": 16}, graders=["verifier", "judge"],
                  select={"thresholds": {"verifier": 1.0}}, mix="replace", train={"epochs": 2},
                  eval={"heldout_problems": 16, "heldout_texts": 6, "diversity_prompts": 4, "diversity_tokens": 16})
    frame = run(values, say=lambda _: None)
    assert frame["generation"].tolist() == [0, 1]
    assert frame["heldout_perplexity"].between(1, 1000).all()
    metrics = json.loads((tmp_path / "run" / "gen-000" / "metrics.json").read_text())
    accepted = metrics["data"]["accepted"]
    assert accepted > 0  # ~18% of its sampled one-digit answers are right: 32 samples hold some
    assert (tmp_path / "run" / "gen-001" / "checkpoint" / "model.safetensors").exists()
    assert metrics["data"]["train"]["examples"] == accepted
