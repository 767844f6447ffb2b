"""The main job: provision the embedded model and run the workbench's story on it, stage by stage.

Today: generate arithmetic, instruction and corpus samples into data/runs/demo and summarise them.
(Grading, selection, fine-tuning and the report join as their issues land.) Rerunning resumes:
finished samples are kept, only missing ones are generated.
"""
from __future__ import annotations

import textwrap
import time

from .generate import generate
from .models import DEFAULT_MODEL, data_dir, load_model
from .store import Run
from .tasks import get_task

# (task, task params, generation params) at full and smoke size
STAGES = {
    "arithmetic": ({"n": 48, "digits": 2}, {"max_new_tokens": 32, "n_per_prompt": 2}),
    "instructions": ({"n": 48}, {"max_new_tokens": 128}),
    "corpus": ({"n": 24}, {"max_new_tokens": 64}),
}
SMOKE = {"arithmetic": 4, "instructions": 4, "corpus": 4}


def _short(text: str, width: int = 110) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder=" ...")


def main(smoke: bool = False, run_dir=None) -> int:
    started = time.perf_counter()
    run = Run(run_dir or data_dir() / "runs" / ("demo-smoke" if smoke else "demo"))
    print(f"== workbench demo -> {run.path}", flush=True)
    stage_start = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    print(f"== model {model.name} ({model.dtype}) loaded in {time.perf_counter() - stage_start:.1f}s", flush=True)
    for task, (task_params, gen_params) in STAGES.items():
        stage_start = time.perf_counter()
        params = dict(task_params, n=SMOKE[task]) if smoke else task_params
        samples = generate(get_task(task, **params), model=model, run=run, seed=0, **gen_params)
        print(f"== generate {task}: {len(samples)} samples in {time.perf_counter() - stage_start:.1f}s", flush=True)
        for row in samples.head(2).itertuples():
            print(f"   prompt:     {_short(row.prompt)}\n   completion: {_short(row.completion)}", flush=True)
    print("\n== summary")
    print(run.summary().to_string(index=False))
    print(f"\n== done in {time.perf_counter() - started:.0f}s; inspect with `workbench runs show {run.path}`")
    return 0
