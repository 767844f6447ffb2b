"""The self-learning loop: for each generation, evaluate the model, generate, grade, select, mix,
fine-tune, and watch held-out quality and diversity for collapse.

    history = workbench.loop.run(LoopConfig(task="arithmetic", generations=3))   # or `workbench loop cfg.yaml`
    LoopConfig(generate=GenerateConfig(n_per_prompt=8, max_new_tokens=16), train=TrainConfig(epochs=2))

Generation g's model is the base model (g = 0) or the checkpoint trained at the end of generation
g - 1 (`Run.checkpoint_dir(g)`). Every stage leaves a file behind, so a run killed at any moment and
rerun with the same command continues from the last finished step: samples and scores resume row
by row, a finished evaluation lives in the generation's metrics.json, a finished fine-tune is the atomically
renamed checkpoint folder. The config is recorded in the run and a rerun with other settings is refused.
With a `track:` section, each generation's metrics and each fine-tune's loss curve also go to a local
trackio store (workbench/tracking.py); off by default.

The config is typed: one dataclass per section (GenerateConfig, SelectionPolicy, MixPolicy, TrainConfig,
EvalConfig, CollapseConfig, PriceConfig, TrackConfig). `LoopConfig.from_dict` / `from_yaml` check every key against
its field's type and name a wrong one by its path (`select.thresholds.judge: expected a number, got
'high'`) before any work is done.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pandas as pd

from . import tracking
from .evaluate import evaluate
from .loop_preference import anchor_stage, pairs_stage
from .loop_config import (GRADERS, CollapseConfig, EvalConfig, GenerateConfig, LoopConfig,  # noqa: F401 (re-exported)
                          MixPolicy, PriceConfig, _as_config)
from .errors import InputDataError
from .loop_graders import PAIRWISE_OPPONENTS, _graders, _loop_panel, detector_real_texts  # noqa: F401 (re-exported)
from .store import Run, score_column, score_columns


# ----------------------------------------------------------------------------------- helpers

def prompts_for(config: LoopConfig, generation: int) -> pd.DataFrame:
    from .tasks import get_task

    params = dict(config.task_params)
    if config.task == "arithmetic":
        params.setdefault("split", "train")  # held-out problems come from the other side of the split
    if config.fresh_prompts:
        params["seed"] = params.get("seed", config.seed) + generation
    return get_task(config.task, **params)


def training_prompts(config: LoopConfig) -> Iterator[str]:
    """Every prompt any generation trains on (lazily: evaluate reads it only for a verifiable task)."""
    return (prompt for g in range(config.generations + 1) for prompt in prompts_for(config, g)["prompt"])


def model_for(config: LoopConfig, run: Run, generation: int):
    from .models import load_model

    if generation == 0:
        return load_model(config.model, dtype="fp32")
    return load_model(str(run.checkpoint_dir(generation)), dtype="fp32")


def real_data(config: LoopConfig) -> pd.DataFrame | None:
    """Human data for the mix: the task's own references, from a seed no generation's prompts use."""
    from .mix import real_examples
    from .tasks import get_task

    if config.mix.name == "replace":
        return None
    params = {**config.task_params, "seed": config.seed + 7_919}
    if config.real_examples is not None:
        params["n"] = config.real_examples
    return real_examples(get_task(config.task, **params))


@dataclass
class Step:
    """One generation of one loop run: what every stage reads. The model loads on first use."""

    config: LoopConfig
    run: Run
    generation: int
    say: Callable[[str], None]
    loaded: Any = None

    def model(self):
        if self.loaded is None:
            self.loaded = model_for(self.config, self.run, self.generation)
        return self.loaded


# ----------------------------------------------------------------------------------- the stages
# Each returns its part of the generation's metrics.json; the loop writes `data` once all have run.

def evaluate_stage(step: Step) -> dict:
    """`eval`: the generation's model on held-out data, measured once (a finished evaluation is read back)."""
    config, generation = step.config, step.generation
    evaluation = step.run.metrics(generation).get("eval")
    if evaluation is None:
        started = time.perf_counter()
        loaded = step.model()
        evaluation = evaluate(loaded, step.run.eval_run(generation), config.task, config.eval,
                              task_params=config.task_params, seed=config.seed,
                              training_prompts=training_prompts(config))
        step.run.log("loop:eval", generation=generation, seconds=round(time.perf_counter() - started, 3))
        step.run.update_metrics(generation, model=loaded.name, eval=evaluation)
    step.say(f"== gen {generation}: " + ", ".join(f"{k} {v:.4g}" for k, v in evaluation.items() if k in (
        "heldout_perplexity", "accuracy_strict", "accuracy_lenient", "diversity_distinct_2")))
    return evaluation


def monitor_collapse(step: Step, evaluations: list[dict]) -> bool:
    """`collapse`: flags of the newest evaluation against generation 0; True when they stop the loop."""
    from .metrics.collapse import collapse_flags

    settings = step.config.collapse
    flags = collapse_flags(evaluations, settings.max_perplexity_rise, settings.max_diversity_drop,
                           settings.diversity_metric, settings.max_length_rise, settings.max_score_inflation,
                           settings.max_tail_rise, settings.max_rare_drop, settings.max_coverage_drop)
    step.run.update_metrics(step.generation, collapse=flags)
    if not flags["collapsed"]:
        return False
    step.say(f"   collapse monitor: {'; '.join(flags['flags'])}")
    if settings.stop:
        step.say("   stopping the loop (collapse.stop is set)")
        step.run.update_metrics(step.generation, stopped="collapse monitor: " + "; ".join(flags["flags"]))
    return settings.stop


def generate_stage(step: Step) -> tuple[pd.DataFrame, dict]:
    """The generation's samples (resumed row by row from the run) and `generate_seconds`."""
    from .sampling import generate

    started = time.perf_counter()
    samples = generate(prompts_for(step.config, step.generation), model=step.model(), run=step.run,
                       generation=step.generation, seed=step.config.seed + step.generation,
                       **asdict(step.config.generate))
    return samples, {"generate_seconds": time.perf_counter() - started}


def grade_stage(step: Step, samples: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Samples with score__<grader> columns; `samples`, `mean_scores`, `completion_tokens`, `grade_seconds`
    and, with a judge beside a verifier, the `judge_audit`. With the lenient `verifier` among the graders,
    `audits`: every other non-verifier grader's `judge_audit` against it (ROC AUC and the rest), each without
    the rows that grader was fitted on (a panel's labelled rows: `excluded_trained` counts them), and for a
    panel fitted in this pass its `weights`, `cv_auc` and `message`."""
    from .graders import grade
    from .metrics import judge_audit

    graders = step.config.graders
    started = time.perf_counter()
    made = _graders(graders, step.model(), seed=step.config.seed, real_texts=lambda: detector_real_texts(step.config))
    graded = grade(samples, made, run=step.run, generation=step.generation)
    scored = {"samples": len(graded),
               "mean_scores": {name: float(graded[column].mean()) for name, column in score_columns(graded).items()},
               "completion_tokens": int(graded["n_completion_tokens"].sum()),
               "mean_answer_tokens": float(graded["n_completion_tokens"].mean()) if len(graded) else None,
               "grade_seconds": time.perf_counter() - started}
    detectors = {g.name: g.train_auc_ for g in made if getattr(g, "train_auc_", None) is not None}
    if detectors:  # how well the machine-text detector tells this generation's samples from real text
        scored["detector_auc"] = detectors
    if "judge" in graders and any(g.startswith("verifier") for g in graders):
        verifier = "verifier" if "verifier" in graders else "verifier_strict"
        scored["judge_audit"] = judge_audit(graded[score_column("judge")], graded[score_column(verifier)])
    audited = [g for g in graders if not g.startswith("verifier")]
    if "verifier" in graders and audited:
        scored["audits"] = _audits(step, graded, made, audited)
    return graded, scored


def _audits(step: Step, graded: pd.DataFrame, made: list, names: list[str]) -> dict:
    """grader -> judge_audit of its scores against the lenient verifier, on the rows it was not fitted on."""
    from .metrics import judge_audit
    from .store import TRAINED_PREFIX

    stored = step.run.graded(step.generation).set_index("sample_id")
    labels = graded[score_column("verifier")].to_numpy(dtype=float)
    by_name, audits = {g.name: g for g in made}, {}
    for name in names:
        trained = stored[TRAINED_PREFIX + name].reindex(graded["sample_id"]).fillna(False).astype(bool).to_numpy() \
            if TRAINED_PREFIX + name in stored.columns else np.zeros(len(graded), bool)
        scores = graded[score_column(name)].to_numpy(dtype=float)
        audit = judge_audit(scores[~trained], labels[~trained], method=getattr(by_name.get(name), "method_", None))
        audit["excluded_trained"] = int(trained.sum())
        grader = by_name.get(name)
        if hasattr(grader, "weights_"):  # a panel fitted in this pass (a resumed pass reads stored scores)
            audit.update(weights=grader.weights_, cv_auc=grader.cv_auc_, message=getattr(grader, "message_", None))
        elif getattr(grader, "message_", None) and name == "panel":
            audit["message"] = grader.message_
        audits[name] = audit
    return audits


def select_stage(step: Step, graded: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The accepted rows (the selection is saved under the run's selections); `accepted`, `accept_rate`,
    the generation's `thresholds`, the `selection` message and `accepted_distinct_2`; with the lenient
    `verifier` among the graders, `accepted_precision`: the share of the accepted rows it marks right."""
    from .metrics import distinct_n
    from .select import accept

    policy = step.config.select.for_generation(step.generation)
    selection = accept(graded, policy)
    selection.save(step.run, step.generation)
    accepted_rows = selection.accepted_rows(graded)
    step.say(f"   gen {step.generation}: {len(graded)} samples, {selection.message}")
    selected = {
        "accepted": selection.n_accepted, "accept_rate": selection.accept_rate,
        "thresholds": policy.thresholds or None, "selection": selection.message,
        "accepted_distinct_2": distinct_n(accepted_rows["completion"].tolist(), 2) if len(accepted_rows) else None}
    if "verifier" in step.config.graders:
        right = accepted_rows[score_column("verifier")].dropna()
        selected["accepted_precision"] = float(right.mean()) if len(right) else None
    return accepted_rows, selected


def mix_stage(step: Step, accepted_rows: pd.DataFrame, real: pd.DataFrame | None) -> tuple[pd.DataFrame, dict]:
    """The training set by the mix policy (from every generation's accepted rows so far, and real data);
    `train_set`: its rows by source. Writes the generation's train_accepted and train_set frames."""
    from .mix import mix

    run, generation = step.run, step.generation
    earlier = [run.read_frame(g, "train_accepted") for g in range(generation)]
    extra = {}
    if step.config.mix.resample_by is not None:  # detector-weighted: redraw the new rows first (nothing written yet)
        accepted_rows, extra = _detector_resample(step, accepted_rows)
    run.write_frame(generation, "train_accepted", accepted_rows[["prompt", "completion", "chat", "finish_reason"]])
    training_set = mix(step.config.mix.spec, earlier + [accepted_rows], real, seed=step.config.seed)
    run.write_frame(generation, "train_set", training_set)
    by_source = training_set["source"].value_counts().to_dict() if len(training_set) else {}
    return training_set, {"train_set": {"rows": len(training_set), "by_source": by_source, **extra}}


def _detector_resample(step: Step, accepted_rows: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """The accepted rows redrawn by the detector's P(real) (workbench.mix.detector_resample), and what the
    redraw did: distinct rows kept, the weights' spread and the mean P(real) before and after."""
    from .mix import detector_resample

    policy = step.config.mix
    column = score_column(policy.resample_by)
    if column not in accepted_rows.columns:
        raise InputDataError(f"The detector-weighted mix needs {policy.resample_by} scores, and this generation's "
                             f"samples have none ({column} is missing).",
                             f"Add '{policy.resample_by}' to graders; nothing was written.")
    if not len(accepted_rows):
        return accepted_rows, {"detector": {"rows": 0}}
    p_real = accepted_rows[column].to_numpy(dtype=float)
    drawn = detector_resample(accepted_rows, p_real, policy.weight, policy.temperature,
                              seed=step.config.seed + step.generation)
    return drawn, {"detector": {"by": policy.resample_by, "weight": policy.weight, "temperature": policy.temperature,
                                "distinct_rows": int(drawn["prompt"].astype(str).add(drawn["completion"].astype(str))
                                                     .nunique()),
                                "max_weight": float(drawn["detector_weight"].max()),
                                "mean_p_real_before": float(np.nanmean(p_real)),
                                "mean_p_real_after": float(drawn[column].mean())}}


TRAIN_STATS = ("method", "examples", "steps", "real_tokens", "seconds", "real_tokens_per_s", "first_loss",
               "last_loss", "padding_share", "device", "precision", "skipped", "reward_margin", "reward_accuracy")


def train_stage(step: Step, training_set: pd.DataFrame) -> dict:
    """`train`: fine-tune into the next generation's checkpoint (once: a finished checkpoint is kept)."""
    from .train import finetune

    config, run, generation = step.config, step.run, step.generation
    checkpoint = run.checkpoint_dir(generation + 1)
    if not checkpoint.exists():
        start = config.model if config.start_from == "base" or generation == 0 else str(run.checkpoint_dir(generation))
        started = time.perf_counter()
        if len(training_set):
            stats = finetune(training_set, model=start, out_dir=checkpoint.parent,
                             config=config.train_config(generation)).stats
        else:
            stats = _keep_model(step, start, checkpoint, "no preference pair (see pairs.no_pair)"
                                if config.train.method == "dpo" else "empty training set (nothing accepted)")
        run.log("loop:train", generation=generation, seconds=round(time.perf_counter() - started, 3),
                tokens=stats["real_tokens"], steps=stats["steps"])
    stats = json.loads((checkpoint / "train_stats.json").read_text())
    if stats["steps"]:
        step.say(f"   fine-tuned on {len(training_set)} examples ({stats['steps']} steps, loss "
                 f"{stats['first_loss']:.3f} -> {stats['last_loss']:.3f}) -> {checkpoint}")
    return {"train": {k: stats.get(k) for k in TRAIN_STATS}}


def _keep_model(step: Step, start: str, checkpoint: Path, reason: str) -> dict:
    """Nothing to learn from: the next generation is the starting model, unchanged, and says so."""
    from .train import save_checkpoint

    config, generation = step.config, step.generation
    step.say(f"   gen {generation}: {reason}; generation {generation + 1} keeps the "
             f"{'base' if start == config.model else 'previous'} model unchanged")
    carried = model_for(config, step.run, generation if start != config.model else 0)
    stats = {"examples": 0, "steps": 0, "real_tokens": 0, "seconds": 0.0, "real_tokens_per_s": None,
             "first_loss": None, "last_loss": None, "padding_share": None, "device": "cpu",
             "precision": None, "skipped": reason, "base_model": carried.name}
    save_checkpoint(carried.model, carried.tokenizer, checkpoint.parent, pd.DataFrame(), stats)
    return stats


def cost_stage(config: LoopConfig, data: dict) -> dict:
    """`cost`: seconds x the hourly price of the device that trained, plus tokens x the token price."""
    train, price = data["train"], config.price
    tokens = data["completion_tokens"] + train["real_tokens"]
    seconds = data["generate_seconds"] + data["grade_seconds"] + train["seconds"]
    hourly = price.gpu_hour if train["device"].startswith("cuda") else price.cpu_hour
    cost = seconds / 3600 * hourly + tokens / 1e6 * price.per_million_tokens
    return {"cost": {"seconds": seconds, "tokens": tokens, "cost": cost,
                     "per_accepted_sample": cost / data["accepted"] if data["accepted"] else None}}


# ----------------------------------------------------------------------------------- the loop

def run(config: LoopConfig | dict | str | Path, say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run (or resume) the loop; returns one row per evaluated generation (see `history`)."""
    config = _as_config(config)
    say = say or (lambda text: print(text, flush=True))
    loop_run = Run(config.run)
    loop_run.check_config("loop", config.to_record())
    real = real_data(config)
    evaluations: list[dict] = []
    # tracking off (the default): a no-op, nothing imported; on: finetune logs its steps into this run too
    with tracking.start(config.track, tracking.run_name(loop_run.path), config.to_record(), say) as tracker:
        for generation in range(config.generations + 1):
            if generation:
                tracker.log_generation(loop_run, generation - 1)  # its data and fine-tune are done
            step = Step(config, loop_run, generation, say)
            evaluations.append({**evaluate_stage(step), **anchor_stage(step)})
            if monitor_collapse(step, evaluations) or generation == config.generations:
                break
            if "data" in loop_run.metrics(generation) and loop_run.checkpoint_dir(generation + 1).exists():
                continue
            samples, generated = generate_stage(step)
            graded, scored = grade_stage(step, samples)
            evaluations[-1].update(anchor_stage(step, graded))  # generation 0 makes the anchor set here
            accepted_rows, selected = select_stage(step, graded)
            if config.train.method == "dpo":  # DPO learns from this generation's pairs (no data mix)
                training_set, mixed = pairs_stage(step, graded)
            else:
                training_set, mixed = mix_stage(step, accepted_rows, real)
            data = {**scored, **selected, **generated, **mixed, **train_stage(step, training_set)}
            loop_run.update_metrics(generation, data={**data, **cost_stage(config, data)})
        tracker.log_generation(loop_run, generation)  # the last one evaluated
    return history(loop_run)


def history(run: Run | str | Path) -> pd.DataFrame:
    """One row per generation: evaluation, data, training, cost and collapse flags, flattened."""
    run = run if isinstance(run, Run) else Run(run)
    rows, base_accuracy, spent = [], None, 0.0
    for generation in run.generations():
        metrics = run.metrics(generation)
        if "eval" not in metrics:
            continue
        row = {"generation": generation, **{k: v for k, v in metrics["eval"].items() if k != "noise"}}
        data = metrics.get("data", {})
        row.update({k: data.get(k) for k in ("samples", "accepted", "accept_rate", "accepted_distinct_2",
                                             "mean_answer_tokens", "own_score")})
        if data.get("pairs"):
            row["pairs"] = data["pairs"]["pairs"]
        row["anchor_score"] = (metrics.get("anchor") or {}).get("mean_score")
        for name, value in (data.get("mean_scores") or {}).items():
            row[f"mean_score_{name}"] = value
        for name, auc in (data.get("detector_auc") or {}).items():
            row[f"detector_auc_{name}"] = auc
        if data.get("judge_audit"):
            row["judge_roc_auc"] = data["judge_audit"].get("roc_auc")
        if "accepted_precision" in data:
            row["accepted_precision"] = data["accepted_precision"]
        for name, audit in (data.get("audits") or {}).items():  # each grader against the lenient verifier
            row[f"auc_{name}"] = audit.get("roc_auc")
        train = data.get("train") or {}
        row.update({f"train_{k}": train.get(k) for k in ("examples", "steps", "first_loss", "last_loss",
                                                         "reward_margin")})
        cost = data.get("cost") or {}
        row["cost"] = cost.get("cost")
        row["cost_per_accepted_sample"] = cost.get("per_accepted_sample")
        accuracy = row.get("accuracy_strict")
        if accuracy is not None and base_accuracy is None:
            base_accuracy = accuracy
        gained = 100 * (accuracy - base_accuracy) if accuracy is not None and base_accuracy is not None else None
        row["cost_per_accuracy_point"] = spent / gained if gained and gained > 0 else None
        spent += cost.get("cost") or 0.0
        collapse = metrics.get("collapse", {})
        row["collapsed"] = collapse.get("collapsed", False)
        row["collapse_flags"] = "; ".join(collapse.get("flags", []))
        rows.append(row)
    return pd.DataFrame(rows)


def scores_by_generation(run: Run | str | Path) -> pd.DataFrame:
    """Every generation's samples with their score__<grader> columns and a `generation` column
    (for score distributions per generation)."""
    run = run if isinstance(run, Run) else Run(run)
    frames = [run.graded(g).assign(generation=g) for g in run.generations() if run.parts("samples", g)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["generation"])
