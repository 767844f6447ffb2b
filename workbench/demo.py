"""The main job: provision the embedded model and run the workbench's story on it, stage by stage.

generate (arithmetic, instructions, corpus) -> grade (verifier, self-judge, perplexity, heuristics,
novelty, realism) -> select (per-task policies) -> diversity of all vs accepted -> judge audit.
Fine-tuning and the report join as their issues land. Rerunning resumes: finished samples and
scores are kept, only what is missing is computed.
"""
from __future__ import annotations

import json
import textwrap
import time

import numpy as np
import pandas as pd

from .embeddings import embed
from .generation import generate
from .graders import grade
from .metrics import diversity_report, judge_audit
from .models import DEFAULT_MODEL, data_dir, load_model
from .pipeline import POLICIES, default_graders
from .select import accept, combine
from .store import Run
from .tasks import get_task

# task -> (task params, generation params); graders and policies: workbench.pipeline
STAGES = {
    "arithmetic": ({"n": 48, "digits": 2}, {"max_new_tokens": 32, "n_per_prompt": 2}),
    "instructions": ({"n": 48}, {"max_new_tokens": 128}),
    "corpus": ({"n": 24}, {"max_new_tokens": 64}),
}
SMOKE_PROMPTS = 4


def _short(text: str, width: int = 110) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder=" ...")


def main(smoke: bool = False, run_dir=None) -> int:
    started = time.perf_counter()
    run = Run(run_dir or data_dir() / "runs" / ("demo-smoke" if smoke else "demo"))
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"== workbench demo -> {run.path}")
    stage = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    say(f"== model {model.name} ({model.dtype}) loaded in {time.perf_counter() - stage:.1f}s")

    samples_by_task = {}
    for task, (task_params, gen_params) in STAGES.items():
        stage = time.perf_counter()
        params = dict(task_params, n=SMOKE_PROMPTS) if smoke else task_params
        samples = generate(get_task(task, **params), model=model, run=run, seed=0, **gen_params)
        samples_by_task[task] = samples
        say(f"== generate {task}: {len(samples)} samples in {time.perf_counter() - stage:.1f}s")
        for row in samples.head(2).itertuples():
            say(f"   prompt:     {_short(row.prompt)}\n   completion: {_short(row.completion)}")

    selections, rows = {}, []
    for task, policy in POLICIES.items():
        stage = time.perf_counter()
        graders = default_graders(task, model, samples_by_task)
        graded = grade(samples_by_task[task], graders, run=run)
        selection = accept(graded, **policy)
        selections[task] = selection
        means = {c.removeprefix("score__"): round(float(graded[c].mean()), 3) for c in graded if c.startswith("score__")}
        say(f"== grade+select {task} in {time.perf_counter() - stage:.1f}s: mean scores {means}")
        say(f"   policy {json.dumps(policy)} -> {selection.message}")
        embeddings = embed(graded["completion"].tolist())
        for label, mask in (("all", np.ones(len(graded), bool)), ("accepted", selection.mask)):
            report = diversity_report(graded.loc[mask, "completion"].tolist(), embeddings=embeddings[mask])
            rows.append({"task": task, "set": label, **{k: report[k] for k in (
                "n_texts", "distinct_1", "distinct_2", "compression_ratio", "self_bleu", "vendi_ngram",
                "vendi_embedding", "homogenization")}})
        if task == "arithmetic":
            audit = judge_audit(graded["score__judge"], graded["score__verifier"])
            say(f"== judge audit (self-judge vs verifier, arithmetic, n={audit['n']}, "
                f"{audit['positives']} correct): ROC AUC {audit['roc_auc']:.3f} (0.5 = chance), "
                f"accuracy at 0.5 {audit['accuracy_at_threshold']:.3f}, Cohen's kappa {audit['kappa_at_threshold']:.3f}, "
                f"ECE {audit['ece']:.3f}")
            auc = audit["roc_auc"]
            verdict = ("cannot be measured (one class only)" if np.isnan(auc) else
                       "is close to chance: do not trust its acceptance without a verifier" if auc < 0.7 else
                       "ranks correct answers above wrong ones better than chance")
            say(f"   The self-judge {verdict}.")
    combine(selections).save(run)

    say("\n== diversity: all samples vs accepted")
    say(pd.DataFrame(rows).round(3).to_string(index=False))
    say("\n== run summary")
    say(run.summary().to_string(index=False))
    say(f"\n== done in {time.perf_counter() - started:.0f}s; inspect with `workbench runs show {run.path}`")
    return 0
