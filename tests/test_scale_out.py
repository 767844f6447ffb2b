"""Beyond one process: concurrent writers in one run folder, generation and grading as Ray tasks with a
worker killed mid-task, and the fine-tuning entry point under `accelerate launch` (1 and 2 CPU processes)."""
from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import psutil
import pytest

from workbench.store import Run
from workbench.tasks import get_task


def _append_many(path: str, writer: int, count: int) -> None:
    run = Run(path)  # a new Run while others write: must not delete their temporary files
    for i in range(count):
        run.append("samples", pd.DataFrame({"sample_id": [f"w{writer}-{i}"], "writer": [writer]}))


def test_concurrent_writers_never_overwrite_each_others_parts(tmp_path):
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(tmp_path / "run"), w, 25)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    run = Run(tmp_path / "run")
    rows = run.read("samples")
    assert len(rows) == 100 and rows["sample_id"].is_unique
    assert len(run.parts("samples")) == 100
    assert not list((tmp_path / "run").rglob(".*.tmp-*"))


def test_stale_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    from workbench.store import _HOST

    folder = tmp_path / "run" / "gen-000" / "samples"
    folder.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = folder / f".part.parquet.tmp-{_HOST}-{dead.stdout.strip()}-1"
    live = folder / f".part.parquet.tmp-{_HOST}-{os.getpid()}-1"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    Run(tmp_path / "run")
    assert not stale.exists() and live.exists()


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _task_processes(name: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        try:
            if any(name in part for part in process.info["cmdline"] or []):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_ray_generation_survives_a_killed_worker_with_every_sample_once(ray_local, tiny_model_dir, tmp_path):
    from workbench.distributed import generate_on_ray, grade_on_ray
    from workbench.graders import Heuristics, Verifier, grade

    prompts = get_task("arithmetic", n=60)
    run = Run(tmp_path / "ray")
    outcome = {}

    def drive():
        try:
            outcome["samples"] = generate_on_ray(prompts, model=str(tiny_model_dir), run=run, shards=2,
                                                 n_per_prompt=2, max_new_tokens=24, batch_size=1,
                                                 checkpoint_every=2, engine="hf")
        except Exception as exc:  # surfaced in the assertion below
            outcome["error"] = exc

    driver = threading.Thread(target=drive)
    driver.start()
    killed, at_kill = None, None
    deadline = time.monotonic() + 180
    while driver.is_alive() and killed is None and time.monotonic() < deadline:
        running = _task_processes("workbench-generate-")
        if running and run.parts("samples"):
            at_kill = len(run.read("samples"))
            running[0].send_signal(signal.SIGKILL)  # the worker process dies mid-task; Ray retries the task
            killed = running[0].pid
        time.sleep(0.05)
    driver.join(300)
    assert "error" not in outcome, outcome.get("error")
    assert killed is not None and at_kill < 120, "no worker was caught mid-task"
    samples = outcome["samples"]
    stored = run.read("samples")
    assert len(stored) == 120 and stored["sample_id"].is_unique and len(samples) == 120
    assert set(stored["prompt_id"]) == set(prompts["prompt_id"])
    # grading on Ray fills one scores table, each sample once, equal to grading here
    graded = grade_on_ray(samples, [Verifier(), Heuristics()], run=run, shards=2)
    scores = run.read("scores/verifier")
    assert len(scores) == 120 and scores["sample_id"].is_unique
    local = grade(samples, [Verifier(), Heuristics()])
    pd.testing.assert_series_equal(graded["score__heuristics"], local["score__heuristics"])
    pd.testing.assert_series_equal(graded["score__verifier"], local["score__verifier"])


def test_ray_refuses_a_loaded_model(ray_local, tiny, tmp_path):
    from workbench.distributed import generate_on_ray
    from workbench.errors import InputDataError

    with pytest.raises(InputDataError, match="spec string"):
        generate_on_ray(["Hi"], model=tiny, run=tmp_path / "r")


def test_finetune_entry_point_under_accelerate_launch(tiny_model_dir, tmp_path):
    """`accelerate launch` with one CPU process (the entry point works under the launcher), then two
    processes over gloo through torchrun (accelerate's own multi-CPU launch needs MPI): the two split
    each step's rows and must reach the same weights as one process."""
    from safetensors.torch import load_file

    data = tmp_path / "examples.parquet"
    pd.DataFrame({"prompt": [f"What is {i} + {i}?" for i in range(12)], "completion": [str(2 * i) for i in range(12)],
                  "chat": True, "finish_reason": "stop"}).to_parquet(data)
    weights = {}
    for processes in (1, 2):
        out = tmp_path / f"out-{processes}"
        launcher = (["-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu", "--num_machines", "1",
                     "--mixed_precision", "no", "--dynamo_backend", "no"] if processes == 1 else
                    ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone"])
        command = [sys.executable, *launcher, "-m", "workbench", "finetune", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out),
                   "--set", "max_steps=3", "tokens_per_batch=256", "learning_rate=0.001", "precision=fp32"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
        stats = json.loads((out / "checkpoint" / "train_stats.json").read_text())
        assert stats["processes"] == processes and stats["steps"] == 3
        assert "3 steps on" in done.stdout
        weights[processes] = load_file(out / "checkpoint" / "model.safetensors")
    start = load_file(tiny_model_dir / "model.safetensors")
    name = "model.layers.0.mlp.down_proj.weight"
    moved = (weights[1][name] - start[name]).abs().max().item()
    gap = (weights[1][name] - weights[2][name]).abs().max().item()
    assert moved > 1e-3 and gap < moved / 20, (moved, gap)


def test_dpo_under_torchrun_two_processes(tiny_model_dir, tmp_path):
    """DPO through TRL under a launcher unchanged: two CPU processes over gloo (TRL's Trainer owns the process
    group); one checkpoint, written once, records both processes."""
    from workbench.pairs import trl_records

    data = tmp_path / "pairs.jsonl"
    frame = pd.DataFrame({"prompt": [f"What is {i} + {i}?" for i in range(8)], "chosen": [str(2 * i) for i in range(8)],
                          "rejected": [f"I think {3 * i}" for i in range(8)], "chat": True})
    pd.DataFrame(trl_records(frame)).to_json(data, orient="records", lines=True)
    out = tmp_path / "dpo"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone", "-m", "workbench",
               "finetune", "--data", str(data), "--model", str(tiny_model_dir), "--out", str(out), "--method", "dpo",
               "--set", "max_steps=2", "pairs_per_step=4", "precision=fp32"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    stats = json.loads((out / "checkpoint" / "train_stats.json").read_text())
    assert stats["processes"] == 2 and stats["steps"] == 2 and stats["method"] == "dpo"
    assert "2 steps on 2 process(es)" in done.stdout and "reward margin" in done.stdout
