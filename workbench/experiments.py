"""The reference experiments, as loop configurations: the scripts under `experiments/`, notebooks
04/05/06 and the tests build them here, so all of them run the same thing.

1. Self-improvement with a verifier (STaR, Zelikman et al. 2022; ReST-EM, Singh et al. 2023) on
   arithmetic: K answers per problem, keep the verified ones, fine-tune the base model on them, repeat;
   beside it the same loop with the model's own judge as the only filter.
2. Collapse (`workbench.model_collapse`; Shumailov et al. 2024; Gerstgrasser et al. 2024) on the corpus task: the model continues
   real text, learns from its continuations, and the data mix decides what happens to held-out
   perplexity and diversity: replace, keep_real(0.1), accumulate, all at the same training compute.
3. Label-free self-improvement (`label_free_configs`) on the arithmetic of 1: which self-grader, with no
   labels (or 32 of them), recovers how much of what the verifier's loop gains.
4. Self-rewarding with DPO (`workbench.self_rewarding.self_rewarding_configs`): pairs picked by the verifier,
   the model's own judge or self-consistency, and whether the self-judged loop hacks its reward.

Every experiment runs over seeds (`seed_configs`, `run_seeds`: `<root>/seed-<s>/<arm>`) and is summarised
per (arm, generation) as the mean and the 95% t-interval half-width across seeds (`summarize_seeds`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd

from .config import from_fields
from .loop import run
from .loop_config import EvalConfig, GenerateConfig, LoopConfig, MixPolicy
from .select import SelectionPolicy
from .train import TrainConfig


def self_improvement_configs(root: str | Path, generations: int = 3, n_prompts: int = 64, k: int = 16,
                             heldout_problems: int = 180, epochs: int = 2, smoke: bool = False, seed: int = 0,
                             model: str = "smollm2-135m", verified_by: str = "verifier_strict") -> dict[str, LoopConfig]:
    """Arms 'verifier' and 'self_judge'. The task is one-digit arithmetic with all four operators: the
    base model gets ~40% right by the last number it writes (greedy) but almost never writes the number
    alone (~0.5% of samples at temperature 1 are right *and* bare). The verifier arm keeps answers that
    are right in that strict format (at most 2 per problem), so the loop has to bootstrap the format from
    a handful of examples; the judge arm keeps the answer the model's own judge likes best per problem.
    Each generation continues from the last checkpoint, so what was learnt accumulates. One-digit
    problems number ~380, split by hash into ~190 for training and ~190 held out: 180 of those are the
    evaluation set (the issue asked for 200; the split holds no more)."""
    if verified_by not in ("verifier", "verifier_strict"):
        from .errors import InputDataError

        raise InputDataError(f"verified_by must be 'verifier' or 'verifier_strict', got {verified_by!r}.", "Pick one.")
    if smoke:
        generations, n_prompts, k, heldout_problems, epochs = 1, 6, 4, 8, 1
    task_params = {"n": n_prompts, "digits": 1, "operators": "+-*/"}
    common = dict(model=model, task="arithmetic", task_params=task_params, generations=generations,
                  generate=GenerateConfig(n_per_prompt=k, temperature=1.0, max_new_tokens=16),
                  mix=MixPolicy("replace"), start_from="last", train=_train(epochs=epochs, learning_rate=1e-4),
                  seed=seed, eval=EvalConfig(heldout_problems=heldout_problems, answer_tokens=16,
                                             heldout_texts=6 if smoke else None,
                                             diversity_prompts=4 if smoke else 32,
                                             diversity_tokens=16 if smoke else 64))
    root = Path(root)
    # verified_by="verifier": right by the last number, any format (the demo uses it: more data, quicker).
    # smoke: 24 samples rarely hold a strict-format right answer; the lenient verifier keeps training in tests
    verified = "verifier" if smoke else verified_by
    return {
        "verifier": LoopConfig(run=str(root / "verifier"), graders=["verifier_strict", "verifier"],
                               select=SelectionPolicy(thresholds={verified: 1.0}, per_prompt_cap=2), **common),
        "self_judge": LoopConfig(run=str(root / "self_judge"), graders=["judge", "verifier_strict", "verifier"],
                                 select=SelectionPolicy(rank_by="judge", top1_of_k=True), **common),
    }


def _train(**values) -> TrainConfig:
    """A TrainConfig that remembers the fields set here (as a YAML train section would): the run's config
    record lists them even where they equal the default (epochs=1), as it did for runs made before."""
    return from_fields(TrainConfig, values, "train")


def run_arms(configs: dict[str, LoopConfig], say=None) -> pd.DataFrame:
    """Run (or resume) every arm; one row per (arm, generation)."""
    frames = []
    for name, config in configs.items():
        if say:
            say(f"=== arm {name}: {config.run}")
        frames.append(run(config, say=say).assign(arm=name))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["arm"] + [c for c in frame.columns if c != "arm"]]


# ----------------------------------------------------------------------------------- 3. label-free

LABEL_FREE_ARMS = ("verifier", "consistency", "pairwise", "self_judge", "panel", "none")
# what each arm learns from, in words (the tables say it beside the numbers)
LABEL_FREE_LABELS = {"verifier": "all (lenient verifier: the ceiling)", "consistency": "none", "pairwise": "none",
                     "self_judge": "none", "panel": "<= 32 verifier labels per generation",
                     "none": "none (keeps every sample: the floor)"}
LABEL_FREE_GRADERS = ("consistency", "pairwise", "judge", "certainty", "panel")  # audited against the verifier


def label_free_configs(root: str | Path, seed: int = 0, smoke: bool = False, generations: int = 2,
                       n_prompts: int = 40, k: int = 8, heldout_problems: int = 191, epochs: int = 2,
                       heldout_texts: int | None = 8, diversity_prompts: int = 16, diversity_tokens: int = 32,
                       model: str = "smollm2-135m", arms: Iterable[str] | None = None) -> dict[str, LoopConfig]:
    """Experiment 3: label-free self-improvement on experiment 1's arithmetic (one digit, + - * /, K answers
    per problem at temperature 1.0, 16 tokens; each generation continues fine-tuning the last checkpoint,
    `epochs` epochs at lr 1e-4, data mix `replace`). Every arm keeps answers by their final number in any
    format, and every arm runs the lenient `verifier` grader, which only the verifier arm selects by: the
    others run it for the audit (each self-grader's ROC AUC against it) and `accepted_precision`.

    Arms (at most 2 kept per problem in every arm but `none`, as experiment 1's verifier arm):
      verifier     lenient verifier = 1 (right by the last number): the ceiling;
      consistency  self-consistency (Wang et al. 2023; Huang et al. 2022): keep the samples whose answer is
                   their problem's majority answer with a share >= 0.5 of the K samples (at least K/2 agree),
                   so a problem without a clear majority gives nothing;
      pairwise     the model's own A-vs-B verdicts (both orders, 2 opponents each) as Bradley-Terry
                   strengths: the top 2 per problem;
      self_judge   pointwise P("Yes") of the model's own judge (SelfJudge): the top 2 per problem;
      panel        a logistic regression over consistency, pairwise, judge and certainty scores, fitted each
                   generation on at most 32 rows labelled by the verifier (the only arm besides `verifier`
                   that sees labels): the top 2 per problem by its P(right). (Not P >= 0.5: at ~20% right
                   samples and 32 labels its P(right) stays near the base rate, ~0.12 on a 16-problem try,
                   so a 0.5 threshold kept nothing.)
      none         every sample kept, right or wrong: the floor.

    Held-out: the whole held-out split of one-digit problems (191, greedy, 16 tokens), strict and lenient
    accuracy; held-out perplexity on `heldout_texts` real passages and distinct-2 of `diversity_prompts`
    free generations are measured too (smaller than experiment 1's: they are not the question here).
    The default size (2 generations, 40 problems, K = 8, pairwise with 2 opponents, 2 epochs) keeps the whole
    experiment, 6 arms x 3 seeds, at ~71 min on a 2-core CPU; experiments/label_free.py gives the measurements.
    smoke: 1 generation, 3 problems, K = 4, 8 held-out problems, 1 optimizer step."""
    chosen = list(arms or LABEL_FREE_ARMS)
    unknown = [arm for arm in chosen if arm not in LABEL_FREE_ARMS]
    if unknown:
        from .errors import InputDataError

        raise InputDataError(f"label_free_configs: unknown arm(s) {unknown}.", f"Use some of {list(LABEL_FREE_ARMS)}.")
    train = _train(epochs=epochs, learning_rate=1e-4)
    if smoke:
        generations, n_prompts, k, heldout_problems = 1, 3, 4, 8
        heldout_texts, diversity_prompts, diversity_tokens = 2, 2, 8
        train = _train(epochs=1, max_steps=1, learning_rate=1e-4)
    common = dict(model=model, task="arithmetic", task_params={"n": n_prompts, "digits": 1, "operators": "+-*/"},
                  generations=generations, generate=GenerateConfig(n_per_prompt=k, temperature=1.0, max_new_tokens=16),
                  mix=MixPolicy("replace"), start_from="last", train=train, seed=seed,
                  eval=EvalConfig(heldout_problems=heldout_problems, answer_tokens=16, heldout_texts=heldout_texts,
                                  diversity_prompts=diversity_prompts, diversity_tokens=diversity_tokens))
    arms_setup = {
        "verifier": (["verifier"], SelectionPolicy(thresholds={"verifier": 1.0}, per_prompt_cap=2)),
        "consistency": (["consistency", "verifier"], SelectionPolicy(thresholds={"consistency": 0.5}, per_prompt_cap=2)),
        "pairwise": (["pairwise", "verifier"], SelectionPolicy(rank_by="pairwise", per_prompt_cap=2)),
        "self_judge": (["judge", "verifier"], SelectionPolicy(rank_by="judge", per_prompt_cap=2)),
        "panel": (["verifier", "consistency", "pairwise", "judge", "certainty", "panel"],
                  SelectionPolicy(rank_by="panel", per_prompt_cap=2)),
        "none": (["verifier"], SelectionPolicy()),
    }
    root = Path(root)
    return {arm: LoopConfig(run=str(root / arm), graders=arms_setup[arm][0], select=arms_setup[arm][1], **common)
            for arm in chosen}


# ----------------------------------------------------------------------------------- generation 0, once

def _evaluation_key(config: LoopConfig) -> dict:
    """Everything generation 0's evaluation reads: the base model, the held-out settings, and the training
    prompts it leaves out (task, its parameters, generations, fresh prompts, seed)."""
    record = config.to_record()
    return {key: record[key] for key in ("model", "task", "task_params", "fresh_prompts", "generations", "eval", "seed")}


def share_base_evaluation(configs: dict[str, LoopConfig], folder: str | Path, say=None) -> bool:
    """Evaluate generation 0 (the base model: greedy held-out answers, perplexity, seeded free generations)
    once into `folder` and copy it into each arm's gen-000/metrics.json, where the loop reads a finished
    evaluation back instead of recomputing it. Only where every arm's evaluation key (`_evaluation_key`) is
    the same, else nothing is shared (False). Each arm's run checks its own config first, so a run folder of
    other settings is refused before anything is written into it; a copied evaluation says where it came from
    (`eval_shared_from`)."""
    from .loop import Step, evaluate_stage
    from .store import Run

    keys = {json.dumps(_evaluation_key(c), sort_keys=True) for c in configs.values()}
    if len(keys) != 1:
        return False
    todo = {arm: c for arm, c in configs.items() if "eval" not in Run(c.run).metrics(0)}
    if not todo:
        return True
    first = next(iter(configs.values()))
    base = Run(folder)
    base.check_config("base_evaluation", _evaluation_key(first))
    evaluation = evaluate_stage(Step(first, base, 0, say or (lambda _: None)))
    model = base.metrics(0).get("model")
    for config in todo.values():
        run = Run(config.run)
        run.check_config("loop", config.to_record())
        run.update_metrics(0, model=model, eval=evaluation, eval_shared_from=str(Path(folder)))
    return True


# ----------------------------------------------------------------------------------- seeds

def seed_configs(make_configs: Callable[..., dict[str, LoopConfig]], root: str | Path, seeds: Iterable[int],
                 **kwargs) -> dict[int, dict[str, LoopConfig]]:
    """seed -> that seed's arms, each in `<root>/seed-<seed>/<arm>` (`make_configs(folder, seed=, **kwargs)`)."""
    return {int(seed): make_configs(Path(root) / f"seed-{int(seed)}", seed=int(seed), **kwargs) for seed in seeds}


def run_seeds(configs: dict[int, dict[str, LoopConfig]], say=None, share_base_eval: bool = False) -> pd.DataFrame:
    """Run (or resume: finished generations are read back) every arm of every seed; one row per (seed, arm,
    generation), columns seed, arm, then `loop.history`'s. share_base_eval: evaluate generation 0 once per
    seed (`share_base_evaluation`, into `<root>/seed-<s>/_base_eval`) instead of once per arm."""
    frames = []
    for seed, arms in configs.items():
        if say:
            say(f"##### seed {seed}")
        if share_base_eval and arms:  # per group of arms whose generation 0 is evaluated the same way
            groups: dict[str, dict[str, LoopConfig]] = {}
            for arm, config in arms.items():
                groups.setdefault(json.dumps(_evaluation_key(config), sort_keys=True), {})[arm] = config
            for index, group in enumerate(g for g in groups.values() if len(g) > 1):
                folder = Path(next(iter(group.values())).run).parent / ("_base_eval" + (f"-{index}" if index else ""))
                share_base_evaluation(group, folder, say)
        frames.append(run_arms(arms, say=say).assign(seed=seed))
    frame = pd.concat(frames, ignore_index=True)
    return frame[["seed", "arm"] + [c for c in frame.columns if c not in ("seed", "arm")]]


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (scipy's t quantile, n - 1 degrees of freedom) over the
    finite values; the half-width is NaN with fewer than 2 values (no spread to measure)."""
    from scipy import stats

    values = np.asarray(pd.to_numeric(pd.Series(values, dtype=object), errors="coerce"), dtype=float)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    return float(values.mean()), float(half)


def summarize_seeds(frame: pd.DataFrame, metrics: Iterable[str], by: tuple[str, ...] = ("arm", "generation")) -> pd.DataFrame:
    """One row per `by` group (arms in their order): `seeds` (how many), and for each metric column present
    `<metric>_mean` and `<metric>_ci95` (the 95% t-interval half-width across seeds; NaN with one seed).
    Booleans count as 0/1; missing values are left out of their metric."""
    metrics = [m for m in metrics if m in frame.columns]
    rows = []
    for key, group in frame.groupby(list(by), sort=False):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,)))
        row["seeds"] = int(group["seed"].nunique()) if "seed" in group else len(group)
        for metric in metrics:
            row[f"{metric}_mean"], row[f"{metric}_ci95"] = mean_ci(group[metric].astype(object).map(
                lambda v: float(v) if isinstance(v, (bool, np.bool_)) else v))
        rows.append(row)
    return pd.DataFrame(rows)


def paired_changes(frame: pd.DataFrame, metrics: Iterable[str]) -> pd.DataFrame:
    """Per arm and metric: the change from generation 0 to the last generation, paired per seed, as mean and
    95% t-interval half-width over seeds (`mean_ci`), and whether the interval excludes 0 (`clear`)."""
    rows = []
    for arm, group in frame.groupby("arm", sort=False):
        for metric in metrics:
            if metric not in group.columns:
                continue
            per_seed = []
            for _, seed_rows in group.groupby("seed"):
                values = pd.to_numeric(seed_rows.sort_values("generation")[metric], errors="coerce").dropna()
                per_seed.append(float(values.iloc[-1] - values.iloc[0]) if len(values) >= 2 else np.nan)
            mean, half = mean_ci(per_seed)
            if np.isfinite(mean):
                rows.append({"arm": arm, "metric": metric, "change_mean": mean, "change_ci95": half,
                             "clear": bool(np.isfinite(half) and abs(mean) > half), "per_seed": per_seed})
    return pd.DataFrame(rows)


def label_free_headline(frame: pd.DataFrame, metric: str = "accuracy_lenient", reference: str = "verifier",
                        min_gain: float = 0.02) -> dict:
    """The share of the `reference` arm's gain (last generation minus generation 0 of `metric`) that each arm
    recovers: per seed the paired ratio gain(arm) / gain(reference), then its mean and 95% t-interval over
    seeds. The ratio means something only where the reference gained clearly: `meaningful` is False (and
    `note` says why) unless every seed's reference gain is >= `min_gain` (0.02 = 2 points, ~4 of 191
    problems) and its 95% interval excludes 0. Returns {metric, reference, reference_gain: {mean, ci95,
    per_seed}, meaningful, note, arms: [{arm, labels (what it learnt from), gain_mean, gain_ci95, recovered_mean, recovered_ci95,
    recovered_per_seed, seeds}]} (gains in points of `metric`, i.e. x 100)."""
    gains = {}
    for (arm, seed), group in frame.groupby(["arm", "seed"], sort=False):
        group = group.sort_values("generation")
        values = pd.to_numeric(group[metric], errors="coerce").to_numpy(float)
        gains[(arm, seed)] = 100 * (values[-1] - values[0]) if len(values) >= 2 else float("nan")
    arms = list(dict.fromkeys(frame["arm"]))
    seeds = list(dict.fromkeys(frame["seed"]))
    reference_gains = [gains.get((reference, s), float("nan")) for s in seeds]
    mean, half = mean_ci(reference_gains)
    finite = [g for g in reference_gains if np.isfinite(g)]
    problems = []
    if reference not in arms:
        problems.append(f"there is no {reference!r} arm")
    elif not finite:
        problems.append("no seed has a last generation to compare with generation 0")
    else:
        if min(finite) < 100 * min_gain:
            problems.append(f"a seed's {reference} gain is below {100 * min_gain:.0f} points "
                            f"(per seed: {', '.join(f'{g:+.1f}' for g in reference_gains)})")
        if not np.isfinite(half) or mean - half <= 0:
            problems.append(f"the {reference} gain's 95% interval ({mean:+.1f} +- {half:.1f} points) does not exclude 0"
                            if np.isfinite(half) else f"one seed cannot give the {reference} gain an interval")
    meaningful = not problems
    note = ("" if meaningful else f"The {reference} arm's gain is too small for the recovered share to mean anything: "
            + "; ".join(problems) + ".")
    rows = []
    for arm in arms:
        arm_gains = [gains.get((arm, s), float("nan")) for s in seeds]
        ratios = [a / r if np.isfinite(a) and np.isfinite(r) and r != 0 else float("nan")
                  for a, r in zip(arm_gains, reference_gains)]
        gain_mean, gain_half = mean_ci(arm_gains)
        ratio_mean, ratio_half = mean_ci(ratios)
        rows.append({"arm": arm, "labels": LABEL_FREE_LABELS.get(arm, ""), "gain_mean": gain_mean, "gain_ci95": gain_half, "recovered_mean": ratio_mean,
                     "recovered_ci95": ratio_half, "recovered_per_seed": ratios,
                     "seeds": int(sum(np.isfinite(g) for g in arm_gains))})
    return {"metric": metric, "reference": reference,
            "reference_gain": {"mean": mean, "ci95": half, "per_seed": reference_gains},
            "meaningful": meaningful, "note": note, "arms": rows}


def run_label_free(root: str | Path, seeds: Iterable[int] = (0, 1, 2), smoke: bool = False, say=None,
                   **sizes) -> dict:
    """Experiment 3 end to end, as the script runs it: every arm of every seed (resumed where finished;
    generation 0 evaluated once per seed), the long table, its summary and the headline.
    Returns {"frame", "summary", "headline", "configs"}."""
    configs = seed_configs(label_free_configs, root, seeds, smoke=smoke, **sizes)
    frame = run_seeds(configs, say=say, share_base_eval=True)
    return {"frame": frame, "summary": summarize_seeds(frame, LABEL_FREE_METRICS),
            "headline": label_free_headline(frame), "configs": configs}


LABEL_FREE_METRICS = ["accuracy_lenient", "accuracy_strict"] + [f"auc_{g}" for g in LABEL_FREE_GRADERS] + [
    "accept_rate", "accepted", "accepted_precision", "cost_per_accepted_sample", "heldout_perplexity",
    "diversity_distinct_2", "train_last_loss"]


# ----------------------------------------------------------------------------------- tables to show

def _number(value: float) -> str:
    return "0.000" if value == 0 else f"{value:.3f}" if abs(value) >= 0.01 else f"{value:.2e}"


def format_summary(summary: pd.DataFrame, metrics: Iterable[str], keep: Iterable[str] = ("arm", "generation", "seeds")
                   ) -> pd.DataFrame:
    """The summary with one text column per metric, "mean ± half-width" (3 decimals, or 3 significant digits
    for values under 0.01 such as a cost per sample; no half-width with one seed; blank where no seed
    measured it), after the `keep` columns; metrics no row measured are left out."""
    shown = pd.DataFrame({c: summary[c] for c in keep if c in summary.columns})
    for metric in metrics:
        if f"{metric}_mean" not in summary.columns or summary[f"{metric}_mean"].isna().all():
            continue
        shown[metric] = ["" if mean != mean else _number(mean) + ("" if half != half else f" ± {_number(half)}")
                         for mean, half in zip(summary[f"{metric}_mean"], summary[f"{metric}_ci95"])]
    return shown


def _pm(mean: float, half: float, digits: int, sign: bool = True) -> str:
    if mean != mean:
        return ""
    return f"{mean:{'+' if sign else ''}.{digits}f}" + ("" if half != half else f" ± {half:.{digits}f}")


def label_free_headline_table(headline: dict) -> pd.DataFrame:
    """`label_free_headline`'s arms as a table of text: gain in points and the share of the reference's gain
    recovered, each "mean ± half-width", and the per-seed ratios."""
    return pd.DataFrame([{
        "arm": row["arm"], "labels": row.get("labels", ""),
        f"{headline['metric']} gain (points)": _pm(row["gain_mean"], row["gain_ci95"], 1),
        f"share of the {headline['reference']} gain recovered": _pm(row["recovered_mean"], row["recovered_ci95"], 2,
                                                                     sign=False),
        "per seed": ", ".join("" if r != r else f"{r:.2f}" for r in row["recovered_per_seed"])}
        for row in headline["arms"]])


def label_free_verdict(headline: dict) -> str:
    """One paragraph: the reference arm's gain per seed and, where the ratio means nothing, why."""
    gain = headline["reference_gain"]
    text = (f"The {headline['reference']} arm gained {_pm(gain['mean'], gain['ci95'], 1)} points of "
            f"{headline['metric']} (per seed: {', '.join(f'{g:+.1f}' for g in gain['per_seed'])}).")
    return text + (" " + headline["note"] if not headline["meaningful"] else "")


# experiment 2 lives in its own module (workbench/model_collapse.py); its configs are reachable from here too
from .model_collapse import COLLAPSE_ARMS, DECODINGS, collapse_configs  # noqa: E402,F401
