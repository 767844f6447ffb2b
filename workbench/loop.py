"""The self-learning loop: for each generation, evaluate the model, generate, grade, select, mix,
fine-tune, and watch held-out quality and diversity for collapse.

    history = workbench.loop.run(LoopConfig(task="arithmetic", generations=3))   # or `workbench loop cfg.yaml`

Generation g's model is the base model (g = 0) or the checkpoint trained at the end of generation
g - 1 (`gen-00g/checkpoint`). Every stage leaves a file behind, so a run killed at any moment and
rerun with the same command continues from the last finished step: samples and scores resume row
by row, a finished evaluation lives in `gen-XXX/metrics.json`, a finished fine-tune is the atomically
renamed checkpoint folder. The config is recorded in the run and a rerun with other settings is refused.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from .errors import InputDataError
from .store import Run, atomic_write_bytes, atomic_write_text

HELDOUT_SEED = 1_000_003  # held-out problems come from their own seed and exclude every training prompt


@dataclass
class LoopConfig:
    run: str = "data/runs/loop"            # run folder (relative paths: to the current directory)
    model: str = "smollm2-135m"            # base model spec
    task: str = "arithmetic"               # arithmetic | instructions | corpus | a prompts file
    task_params: dict = field(default_factory=lambda: {"n": 64})  # arguments of the task (n prompts per generation)
    fresh_prompts: bool = True             # new prompts each generation (task seed + generation); False: same set
    generations: int = 3                   # fine-tuning rounds; models 0..generations are evaluated
    generate: dict = field(default_factory=lambda: {"n_per_prompt": 4, "temperature": 0.8, "max_new_tokens": 32})
    graders: list = field(default_factory=lambda: ["verifier"])  # verifier, verifier_strict, judge, perplexity, heuristics
    select: dict = field(default_factory=lambda: {"thresholds": {"verifier": 1.0}})  # accept() arguments;
                                           # thresholds may be a schedule (lists or {start, step, max})
    mix: Any = "replace"                   # replace | accumulate | {keep_real: f} | {accumulate_subsample: B}
    real_examples: int | None = 256        # real (human) examples available to the mix (None: all the task has)
    start_from: str = "base"               # base: each generation fine-tunes the base model (ReST-EM, STaR);
                                           # last: continue from the previous checkpoint
    train: dict = field(default_factory=dict)  # workbench.train.TrainConfig fields
    eval: dict = field(default_factory=dict)   # see EVAL_DEFAULTS
    collapse: dict = field(default_factory=dict)  # see COLLAPSE_DEFAULTS
    price: dict = field(default_factory=lambda: {"cpu_hour": 0.10, "gpu_hour": 3.00, "per_million_tokens": 0.0})
    seed: int = 0

    @classmethod
    def from_yaml(cls, path: str | Path) -> "LoopConfig":
        import yaml

        path = Path(path)
        if not path.exists():
            raise InputDataError(f"Loop config {path} does not exist.", "Pass the path of a YAML file (see README).")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise InputDataError(f"Loop config {path} is not valid YAML: {exc}.", "Fix the YAML syntax.") from exc
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> "LoopConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputDataError(f"Unknown loop config key(s) {unknown}.", f"Use only: {sorted(known)}.")
        config = cls(**values)
        config.check()
        return config

    def check(self) -> None:
        from .mix import parse_mix
        from .train import TrainConfig

        if self.generations < 0:
            raise InputDataError(f"generations must be >= 0, got {self.generations}.", "E.g. generations: 3.")
        if self.start_from not in ("base", "last"):
            raise InputDataError(f"start_from must be 'base' or 'last', got {self.start_from!r}.", "Pick one.")
        unknown = [g for g in self.graders if g not in GRADERS]
        if unknown:
            raise InputDataError(f"Unknown grader(s) {unknown} in the loop config.", f"Use {sorted(GRADERS)}.")
        unknown = sorted(set(self.eval) - set(EVAL_DEFAULTS)) + sorted(set(self.collapse) - set(COLLAPSE_DEFAULTS))
        if unknown:
            raise InputDataError(f"Unknown eval/collapse key(s) {unknown}.",
                                 f"eval: {sorted(EVAL_DEFAULTS)}; collapse: {sorted(COLLAPSE_DEFAULTS)}.")
        parse_mix(self.mix)
        TrainConfig(**self.train).check()


EVAL_DEFAULTS = {
    "heldout_problems": 200,        # verifiable tasks: greedy accuracy on problems never trained on
    "answer_tokens": 24,            # completion budget for those answers
    "heldout_texts": None,          # held-out real passages for perplexity (None: all of them)
    "diversity_prompts": 32,        # free generations from fixed prompts for the diversity report
    "diversity_tokens": 64,
    "diversity_task": "auto",       # auto: held-out corpus prompts for the corpus task, else instructions
}
COLLAPSE_DEFAULTS = {"max_perplexity_rise": 0.25, "max_diversity_drop": 0.25, "diversity_metric": "distinct_2",
                     "stop": False}


def _graders(names: list[str], loaded) -> list:
    from .graders import Heuristics, Perplexity, SelfJudge, Verifier

    makers = {"verifier": lambda: Verifier(), "verifier_strict": lambda: Verifier(name="verifier_strict", strict=True),
              "judge": lambda: SelfJudge(model=loaded), "perplexity": lambda: Perplexity(model=loaded),
              "heuristics": lambda: Heuristics()}
    return [makers[name]() for name in names]


GRADERS = ("verifier", "verifier_strict", "judge", "perplexity", "heuristics")


# ----------------------------------------------------------------------------------- helpers

def _metrics_path(run: Run, generation: int) -> Path:
    return run.path / f"gen-{generation:03d}" / "metrics.json"


def read_metrics(run: Run, generation: int) -> dict:
    path = _metrics_path(run, generation)
    return json.loads(path.read_text()) if path.exists() else {}


def _update_metrics(run: Run, generation: int, **sections) -> dict:
    metrics = {**read_metrics(run, generation), "generation": generation, **sections}
    atomic_write_text(_metrics_path(run, generation), json.dumps(metrics, indent=2, default=_plain))
    return metrics


def _plain(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def prompts_for(config: LoopConfig, generation: int) -> pd.DataFrame:
    from .tasks import get_task

    params = dict(config.task_params)
    if config.task == "arithmetic":
        params.setdefault("split", "train")  # held-out problems come from the other side of the split
    if config.fresh_prompts:
        params["seed"] = params.get("seed", config.seed) + generation
    return get_task(config.task, **params)


def heldout_problems(config: LoopConfig, n: int) -> pd.DataFrame:
    """Verifiable problems from the task's held-out split (and, to be sure, minus any training prompt)."""
    from .tasks import get_task

    seen = set()
    for g in range(config.generations + 1):
        seen.update(prompts_for(config, g)["prompt"])
    params = {**config.task_params, "n": n, "seed": HELDOUT_SEED, "split": "heldout"}
    problems = get_task(config.task, **params)
    return problems[~problems["prompt"].isin(seen)].head(n).reset_index(drop=True)


def _diversity_prompts(config: LoopConfig, n: int) -> pd.DataFrame:
    from .tasks import get_task

    task = config.eval.get("diversity_task", "auto")
    if task == "auto":
        task = "corpus" if config.task == "corpus" else "instructions"
    if task == "corpus":
        return get_task("corpus", n=n, split="heldout", seed=HELDOUT_SEED)
    return get_task(task, n=n)


# ----------------------------------------------------------------------------------- evaluation

def evaluate(loaded, config: LoopConfig, run: Run, generation: int) -> dict:
    """Held-out perplexity, task accuracy (strict and lenient), and diversity of free generations.
    Its generations go into `gen-XXX/eval/`, a run of its own, so an interrupted evaluation resumes."""
    from .generation import generate
    from .graders import Verifier
    from .metrics import diversity_report
    from .metrics.collapse import heldout_perplexity
    from .tasks import get_task

    settings = {**EVAL_DEFAULTS, **config.eval}
    eval_run = Run(run.path / f"gen-{generation:03d}" / "eval")
    out: dict[str, Any] = {}
    started = time.perf_counter()
    heldout = get_task("corpus", n=settings["heldout_texts"], split="heldout")
    texts = (heldout["prompt"] + " " + heldout["reference"]).tolist()
    out["heldout_perplexity"] = heldout_perplexity(loaded, texts)
    out["heldout_texts"] = len(texts)

    problems = heldout_problems(config, settings["heldout_problems"]) if config.task == "arithmetic" else None
    if problems is not None and len(problems):
        answers = generate(problems, model=loaded, temperature=0.0, max_new_tokens=settings["answer_tokens"],
                           run=eval_run, seed=config.seed)
        out["accuracy_strict"] = float(Verifier(strict=True).score(answers).mean())
        out["accuracy_lenient"] = float(Verifier().score(answers).mean())
        out["heldout_problems"] = len(answers)
    prompts = _diversity_prompts(config, settings["diversity_prompts"])
    free = generate(prompts, model=loaded, temperature=0.8, max_new_tokens=settings["diversity_tokens"],
                    run=eval_run, seed=config.seed)
    report = diversity_report(free["completion"].tolist())
    for key in ("distinct_1", "distinct_2", "entropy_2", "compression_ratio", "self_bleu", "vendi_ngram",
                "mean_words"):
        out[f"diversity_{key}"] = report[key]
    out["eval_seconds"] = time.perf_counter() - started
    return out


# ----------------------------------------------------------------------------------- the loop

def _cost(seconds: float, tokens: int, device: str, price: dict) -> float:
    hourly = price.get("gpu_hour", 0.0) if device.startswith("cuda") else price.get("cpu_hour", 0.0)
    return seconds / 3600 * hourly + tokens / 1e6 * price.get("per_million_tokens", 0.0)


def _model_for(config: LoopConfig, run: Run, generation: int):
    from .models import load_model

    if generation == 0:
        return load_model(config.model, dtype="fp32")
    return load_model(str(run.path / f"gen-{generation:03d}" / "checkpoint"), dtype="fp32")


def run(config: LoopConfig | dict | str | Path, say: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Run (or resume) the loop; returns one row per evaluated generation (see `history`)."""
    from .generation import generate
    from .graders import grade
    from .metrics import distinct_n, judge_audit
    from .metrics.collapse import collapse_flags
    from .select import accept, thresholds_for
    from .mix import mix, real_examples
    from .train import TrainConfig, finetune, save_checkpoint

    if isinstance(config, (str, Path)):
        config = LoopConfig.from_yaml(config)
    elif isinstance(config, dict):
        config = LoopConfig.from_dict(config)
    config.check()
    say = say or (lambda text: print(text, flush=True))
    loop_run = Run(config.run)
    loop_run.check_config("loop", asdict(config))
    collapse_settings = {**COLLAPSE_DEFAULTS, **config.collapse}
    real = None
    if config.mix != "replace":
        # human data: the task's own references, from a seed no generation's prompts use
        real_params = {**config.task_params, "seed": config.seed + 7_919}
        if config.real_examples is not None:
            real_params["n"] = config.real_examples
        real = real_examples(_task(config.task, real_params))

    evaluations: list[dict] = []
    for generation in range(config.generations + 1):
        metrics = read_metrics(loop_run, generation)
        loaded = None
        if "eval" not in metrics:
            stage = time.perf_counter()
            loaded = _model_for(config, loop_run, generation)
            evaluation = evaluate(loaded, config, loop_run, generation)
            loop_run.log("loop:eval", generation=generation, seconds=round(time.perf_counter() - stage, 3))
            metrics = _update_metrics(loop_run, generation, model=loaded.name, eval=evaluation)
        evaluations.append(metrics["eval"])
        flags = collapse_flags(evaluations, collapse_settings["max_perplexity_rise"],
                               collapse_settings["max_diversity_drop"], collapse_settings["diversity_metric"])
        metrics = _update_metrics(loop_run, generation, collapse=flags)
        say(f"== gen {generation}: " + ", ".join(f"{k} {v:.4g}" for k, v in metrics["eval"].items()
                                                  if k in ("heldout_perplexity", "accuracy_strict", "accuracy_lenient",
                                                           "diversity_distinct_2")))
        if flags["collapsed"]:
            say(f"   collapse monitor: {'; '.join(flags['flags'])}")
            if collapse_settings["stop"]:
                say("   stopping the loop (collapse.stop is set)")
                _update_metrics(loop_run, generation, stopped="collapse monitor: " + "; ".join(flags["flags"]))
                break
        if generation == config.generations:
            break
        checkpoint = loop_run.path / f"gen-{generation + 1:03d}" / "checkpoint"
        if "data" in metrics and checkpoint.exists():
            continue

        # generate -> grade -> select -> mix -> fine-tune
        loaded = loaded or _model_for(config, loop_run, generation)
        stage = time.perf_counter()
        samples = generate(prompts_for(config, generation), model=loaded, run=loop_run, generation=generation,
                           seed=config.seed + generation, **config.generate)
        generate_seconds = time.perf_counter() - stage
        stage = time.perf_counter()
        graded = grade(samples, _graders(config.graders, loaded), run=loop_run, generation=generation)
        grade_seconds = time.perf_counter() - stage
        select_args = dict(config.select)
        if "thresholds" in select_args:
            select_args["thresholds"] = thresholds_for(select_args["thresholds"], generation)
        selection = accept(graded, **select_args)
        selection.save(loop_run, generation)
        accepted = selection.accepted(graded)
        data = {"samples": len(graded), "accepted": selection.n_accepted, "accept_rate": selection.accept_rate,
                "thresholds": select_args.get("thresholds"), "selection": selection.message,
                "mean_scores": {c.removeprefix("score__"): float(graded[c].mean()) for c in graded
                                if c.startswith("score__")},
                "accepted_distinct_2": distinct_n(accepted["completion"].tolist(), 2) if len(accepted) else None,
                "completion_tokens": int(graded["n_completion_tokens"].sum()),
                "generate_seconds": generate_seconds, "grade_seconds": grade_seconds}
        if "judge" in config.graders and any(g.startswith("verifier") for g in config.graders):
            verifier = "verifier" if "verifier" in config.graders else "verifier_strict"
            data["judge_audit"] = judge_audit(graded["score__judge"], graded[f"score__{verifier}"])
        say(f"   gen {generation}: {len(graded)} samples, {selection.message}")

        history_accepted = [pd.read_parquet(loop_run.path / f"gen-{g:03d}" / "train_accepted.parquet")
                            for g in range(generation)]
        _save_frame(accepted[["prompt", "completion", "chat", "finish_reason"]], loop_run, generation,
                    "train_accepted.parquet")
        training_set = mix(config.mix, history_accepted + [accepted], real, seed=config.seed)
        _save_frame(training_set, loop_run, generation, "train_set.parquet")
        data["train_set"] = {"rows": len(training_set),
                             "by_source": training_set["source"].value_counts().to_dict() if len(training_set) else {}}
        if not checkpoint.exists():
            start = config.model if config.start_from == "base" or generation == 0 else str(
                loop_run.path / f"gen-{generation:03d}" / "checkpoint")
            stage = time.perf_counter()
            if len(training_set):
                result = finetune(training_set, model=start, out_dir=checkpoint.parent,
                                  config=TrainConfig(**{"seed": config.seed + generation, **config.train}))
                stats = result.stats
            else:  # nothing to learn from: the next generation is the starting model, unchanged, and says so
                say(f"   gen {generation}: the training set is empty; generation {generation + 1} keeps the "
                    f"{'base' if start == config.model else 'previous'} model unchanged")
                carried = _model_for(config, loop_run, generation if start != config.model else 0)
                stats = {"examples": 0, "steps": 0, "real_tokens": 0, "seconds": 0.0, "real_tokens_per_s": None,
                         "first_loss": None, "last_loss": None, "padding_share": None, "device": "cpu",
                         "precision": None, "skipped": "empty training set (nothing accepted)",
                         "base_model": carried.name}
                save_checkpoint(carried.model, carried.tokenizer, checkpoint.parent, pd.DataFrame(), stats)
            loop_run.log("loop:train", generation=generation, seconds=round(time.perf_counter() - stage, 3),
                         tokens=stats["real_tokens"], steps=stats["steps"])
        stats = json.loads((checkpoint / "train_stats.json").read_text())
        data["train"] = {k: stats.get(k) for k in ("examples", "steps", "real_tokens", "seconds", "real_tokens_per_s",
                                                   "first_loss", "last_loss", "padding_share", "device", "precision",
                                                   "skipped")}
        tokens = data["completion_tokens"] + stats["real_tokens"]
        seconds = generate_seconds + grade_seconds + stats["seconds"]
        cost = _cost(seconds, tokens, stats["device"], config.price)
        data["cost"] = {"seconds": seconds, "tokens": tokens, "cost": cost,
                        "per_accepted_sample": cost / selection.n_accepted if selection.n_accepted else None}
        _update_metrics(loop_run, generation, data=data)
        if stats["steps"]:
            say(f"   fine-tuned on {len(training_set)} examples ({stats['steps']} steps, loss "
                f"{stats['first_loss']:.3f} -> {stats['last_loss']:.3f}) -> {checkpoint}")
    frame = history(loop_run)
    return frame


def _task(name: str, params: dict) -> pd.DataFrame:
    from .tasks import get_task

    return get_task(name, **params)


def _save_frame(frame: pd.DataFrame, run: Run, generation: int, name: str) -> None:
    atomic_write_bytes(run.path / f"gen-{generation:03d}" / name, frame.reset_index(drop=True).to_parquet(index=False))


def history(run: Run | str | Path) -> pd.DataFrame:
    """One row per generation: evaluation, data, training, cost and collapse flags, flattened."""
    run = run if isinstance(run, Run) else Run(run)
    rows, base_accuracy, spent = [], None, 0.0
    for generation in run.generations():
        metrics = read_metrics(run, generation)
        if "eval" not in metrics:
            continue
        row = {"generation": generation, **metrics["eval"]}
        data = metrics.get("data", {})
        row.update({k: data.get(k) for k in ("samples", "accepted", "accept_rate", "accepted_distinct_2")})
        for name, value in (data.get("mean_scores") or {}).items():
            row[f"mean_score_{name}"] = value
        if data.get("judge_audit"):
            row["judge_roc_auc"] = data["judge_audit"].get("roc_auc")
        train = data.get("train") or {}
        row.update({f"train_{k}": train.get(k) for k in ("examples", "steps", "first_loss", "last_loss")})
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
    from .widgets import graded_table

    run = run if isinstance(run, Run) else Run(run)
    frames = [graded_table(run, g).assign(generation=g) for g in run.generations() if run.parts("samples", g)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["generation"])
