"""Generate and grade on Ray (the optional extra `ray`): shards of the work as Ray tasks, one run.

    samples = generate_on_ray(get_task("arithmetic", n=256), model="openai:llama-8b@http://vllm:8000/v1",
                              run="data/runs/big", shards=16, n_per_prompt=4)
    graded = grade_on_ray(samples, [Verifier(), SelfJudge(model=...)], run="data/runs/big", shards=16)

Each task runs the ordinary `generate(..., shard=(i, n))` / `grade(...)` against the same run folder
(a shared file system on a cluster) and writes its own parts, so the store's guarantees carry over:
a part is whole or absent, a part name is claimed atomically (two workers never overwrite each
other), and a retried task skips the samples its killed predecessor already wrote. Ray retries a
task whose worker process dies (`max_retries`); nothing is scheduled by hand here.

Locally `ray.init()` starts a one-machine cluster; on a cluster pass `address="ray://head:10001"` or
`"auto"`: the same code. Models are passed as specs (strings), not loaded objects: each worker
loads its own copy (or talks to its server), so nothing big travels through Ray's object store.
"""
from __future__ import annotations

import os
from typing import Sequence

import pandas as pd

from .errors import InputDataError


def _ray(address: str | None, num_cpus: int | None):
    try:
        import ray
    except ImportError as exc:
        raise InputDataError("Distributed execution needs Ray.", "pip install 'ray>=2.9' (or -e '.[ray]').") from exc
    if not ray.is_initialized():
        # workers inherit the driver's environment: the data folder and the progress style
        env = {k: v for k, v in os.environ.items() if k.startswith(("WORKBENCH_", "OMP_", "HF_"))}
        ray.init(address=address, num_cpus=num_cpus if address is None else None, include_dashboard=False,
                 log_to_driver=False, runtime_env={"env_vars": env} if env else None)
    return ray


def _check_spec(model) -> None:
    if not isinstance(model, str):
        raise InputDataError(f"On Ray, pass the model as a spec string, not a {type(model).__name__}.",
                             "E.g. model='smollm2-135m', a model folder, or 'openai:NAME@URL': each worker loads "
                             "its own copy.")


def generate_on_ray(prompts, model: str, run, shards: int = 2, address: str | None = None,
                    num_cpus: int | None = None, cpus_per_task: float = 1, max_retries: int = 3,
                    generation: int = 0, **generate_kwargs) -> pd.DataFrame:
    """`workbench.generate` split into `shards` Ray tasks writing into one run; returns all its samples."""
    from .sampling import as_prompts, collect_samples
    from .store import Run

    _check_spec(model)
    if shards < 1:
        raise InputDataError(f"shards must be >= 1, got {shards}.", "Use one shard per worker or more.")
    prompts = as_prompts(prompts)
    run = run if isinstance(run, Run) else Run(run)
    ray = _ray(address, num_cpus)

    @ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)
    def generate_shard(prompts, model, run_path, shard, generation, kwargs):
        from workbench.sampling import generate

        return len(generate(prompts, model=model, run=run_path, generation=generation, shard=shard, **kwargs))

    shared = ray.put(prompts)
    tasks = [generate_shard.options(name=f"workbench-generate-{i}-of-{shards}").remote(
        shared, model, str(run.path), (i, shards), generation, generate_kwargs) for i in range(shards)]
    ray.get(tasks)
    run.refresh_manifest()  # the last worker's manifest may predate a part another worker wrote
    return collect_samples([], run, generation, prompts)


def grade_on_ray(samples: pd.DataFrame, graders: Sequence, run, shards: int = 2, address: str | None = None,
                 num_cpus: int | None = None, cpus_per_task: float = 1, max_retries: int = 3,
                 generation: int = 0) -> pd.DataFrame:
    """`workbench.grade` over `shards` slices of `samples` as Ray tasks; returns samples with score columns.

    Graders travel to the workers pickled: build them from specs (SelfJudge(model="smollm2-135m"), not a
    loaded model) so each worker loads its own model. Fitted graders (Realism) are fitted per worker on the
    same data, which gives the same model.
    """
    from .graders import grade
    from .store import Run

    if len(samples) == 0:
        raise InputDataError("There are no samples to grade.", "Generate first (generate_on_ray or generate).")
    run = run if isinstance(run, Run) else Run(run)
    ray = _ray(address, num_cpus)

    @ray.remote(num_cpus=cpus_per_task, max_retries=max_retries)
    def grade_shard(part, graders, run_path, generation):
        from workbench.graders import grade
        from workbench.store import Run

        grade(part, graders, run=Run(run_path), generation=generation)
        return len(part)

    tasks = [grade_shard.options(name=f"workbench-grade-{i}-of-{shards}").remote(
        samples.iloc[i::shards], list(graders), str(run.path), generation) for i in range(shards)]
    ray.get(tasks)
    run.refresh_manifest()
    return grade(samples, graders, run=run, generation=generation)  # reads every stored score, computes none
