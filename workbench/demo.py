"""The main job: provision the embedded model and run the workbench's story on it, stage by stage.

generate (arithmetic, instructions, corpus) -> grade (verifier, self-judge, perplexity, heuristics,
novelty, realism) -> select (per-task policies) -> diversity of all vs accepted -> judge audit ->
the self-learning loop on arithmetic (2 generations: generate, verify, fine-tune, evaluate) -> the
report (notebooks 01-04 rendered to self-contained HTML under reports/demo/). Rerunning resumes:
finished samples, scores, checkpoints and evaluations are kept, only what is missing is computed.
"""
from __future__ import annotations

import json
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

from . import loop
from .embeddings import embed
from .experiments import self_improvement_configs
from .sampling import generate
from .graders import grade
from .metrics import diversity_report, judge_audit
from .models import DEFAULT_MODEL, data_dir, load_model
from .pipeline import TASK_POLICIES, default_graders, generation_plan
from . import report as reporting
from .select import accept, combine, score_column, score_columns
from .store import Run

# the story's sizes, per notebook: the demo runs these stages itself (printing as it goes) and then
# renders the same notebooks with the same parameters into reports/, where they find the work done
DEMO = {
    "01_generate": {"n_arithmetic": 48, "n_instructions": 48, "n_corpus": 24, "max_new_tokens": 96},
    "02_grade_and_diversity": {},
    "03_thresholds": {"task": "instructions", "train_on_selection": False},
    "04_self_learning_loop": {"arm": "verifier", "generations": 2, "n_prompts": 48, "k": 4, "heldout_problems": 60,
                              "epochs": 2, "verified_by": "verifier"},
}
# smoke (tests): the same stages at tiny sizes; its report renders 01, 03 (the explorer, which the browser
# test opens offline) and 04 only (the test suite renders every notebook elsewhere), which keeps the suite
# inside its time budget
SMOKE = {
    "01_generate": {"n_arithmetic": 4, "n_instructions": 4, "n_corpus": 4, "max_new_tokens": 24},
    "03_thresholds": DEMO["03_thresholds"],
    "04_self_learning_loop": {"arm": "verifier", "smoke": True},
}


def _short(text: str, width: int = 110) -> str:
    return textwrap.shorten(" ".join(str(text).split()), width=width, placeholder=" ...")


def main(smoke: bool = False, run_dir=None, write_report: bool = True, report_dir=None) -> int:
    started = time.perf_counter()
    run = Run(run_dir or data_dir() / "runs" / ("demo-smoke" if smoke else "demo"))
    say = lambda text: print(text, flush=True)  # noqa: E731
    say(f"== workbench demo -> {run.path}")
    stage = time.perf_counter()
    model = load_model(DEFAULT_MODEL)
    say(f"== model {model.name} ({model.dtype}) loaded in {time.perf_counter() - stage:.1f}s")

    sizes = SMOKE if smoke else DEMO
    samples_by_task = {}
    for task, kwargs in generation_plan(**sizes["01_generate"]).items():
        stage = time.perf_counter()
        samples = generate(model=model, run=run, **kwargs)
        samples_by_task[task] = samples
        say(f"== generate {task}: {len(samples)} samples in {time.perf_counter() - stage:.1f}s")
        for row in samples.head(2).itertuples():
            say(f"   prompt:     {_short(row.prompt)}\n   completion: {_short(row.completion)}")

    selections, rows = {}, []
    for task, policy in TASK_POLICIES.items():
        stage = time.perf_counter()
        graders = default_graders(task, model, samples_by_task)
        graded = grade(samples_by_task[task], graders, run=run)
        selection = accept(graded, policy)
        selections[task] = selection
        means = {name: round(float(graded[column].mean()), 3) for name, column in score_columns(graded).items()}
        say(f"== grade+select {task} in {time.perf_counter() - stage:.1f}s: mean scores {means}")
        say(f"   policy {json.dumps({k: v for k, v in policy.to_dict().items() if v})} -> {selection.message}")
        embeddings = embed(graded["completion"].tolist())
        for label, mask in (("all", np.ones(len(graded), bool)), ("accepted", selection.mask)):
            report = diversity_report(graded.loc[mask, "completion"].tolist(), embeddings=embeddings[mask])
            rows.append({"task": task, "set": label, **{k: report[k] for k in (
                "n_texts", "distinct_1", "distinct_2", "compression_ratio", "self_bleu", "vendi_ngram",
                "vendi_embedding", "homogenization")}})
        if task == "arithmetic":
            audit = judge_audit(graded[score_column("judge")], graded[score_column("verifier")])
            say(f"== judge audit (self-judge vs verifier, arithmetic, n={audit['n']}, "
                f"{audit['positives']} correct): ROC AUC {audit['roc_auc']:.3f} (0.5 = chance), "
                f"accuracy at 0.5 {audit['accuracy_at_threshold']:.3f}, Cohen's kappa {audit['kappa_at_threshold']:.3f}, "
                f"ECE {audit['ece']:.3f}")
            auc = audit["roc_auc"]
            verdict = ("cannot be measured (one class only)" if np.isnan(auc) else
                       "is close to chance: do not trust its acceptance without a verifier" if auc < 0.7 else
                       "ranks correct answers above wrong ones better than chance")
            say(f"   The self-judge {verdict}.")
    saved = combine(selections).save(run)
    say(f"   selections saved as {run.selection_path(0, saved).relative_to(run.path)}")

    say("\n== diversity: all samples vs accepted")
    say(pd.DataFrame(rows).round(3).to_string(index=False))
    say("\n== run summary")
    say(run.summary().to_string(index=False))

    stage = time.perf_counter()
    loop_sizes = {k: v for k, v in sizes["04_self_learning_loop"].items() if k != "arm"}
    config = self_improvement_configs(run.path / "loop", **loop_sizes)[sizes["04_self_learning_loop"]["arm"]]
    say(f"\n== self-learning loop: {config.generations} generations of generate -> verify -> fine-tune on the "
        f"verified answers -> evaluate ({config.run})")
    history = loop.run(config, say=say)
    say(history[["generation", "accuracy_strict", "accuracy_lenient", "heldout_perplexity", "diversity_distinct_2",
                 "accept_rate", "train_last_loss"]].round(3).to_string(index=False))
    say(f"   loop done in {time.perf_counter() - stage:.0f}s")

    if write_report:
        stage = time.perf_counter()
        out_dir = Path(report_dir or (run.path / "report" if run_dir else Path("reports") / run.name))
        say(f"\n== report: executing notebooks {', '.join(sizes)} on this run (they reuse its results)")
        paths = reporting.report(run_name=str(run.path), out_dir=out_dir, notebooks=list(sizes), parameters=sizes)
        say(f"   written in {time.perf_counter() - stage:.0f}s: open {paths[0].parent}/ (e.g. {paths[-1]})")
    say(f"\n== done in {time.perf_counter() - started:.0f}s; inspect with `workbench runs show {run.path}`")
    return 0
