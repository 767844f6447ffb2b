"""Experiment 2, model collapse, measured the way the papers do: the arms (data-mix policy x decoding), what
is measured per generation, and what the tables say.

The model continues real human text (the corpus task: CPython's own prose) and is fine-tuned on its
continuations, generation after generation, continuing from its last checkpoint with the same training
compute in every arm. Arms: `replace` (only the newest continuations: Shumailov et al. 2024), `keep_real_0.1`
(10% real rows re-sampled each generation), `accumulate` (all real data and every generation's continuations:
Gerstgrasser et al. 2024), all three at pure sampling (temperature 1.0, no truncation); `replace` at two further
decodings (nucleus top-p 0.9, temperature 0.7: Drayson et al. find the decoding sets the pace); and
`detector_replace_temp_0.7`, replace at temperature 0.7 with each generation's continuations first redrawn by a
machine-text detector's P(real) (Drayson, Yilmaz & Lampos, EMNLP 2025). Per generation: held-out
perplexity (pooled, and per passage: mean, 90th and 99th percentile), the probability of the real text's rare
tokens, vocabulary coverage and unigram entropy of free generations against the real continuations, distinct-2
and n-gram Vendi, each with a 95% interval across seeds.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .loop_config import CollapseConfig, EvalConfig, GenerateConfig, LoopConfig, MixPolicy
from .select import SelectionPolicy

COLLAPSE_METRICS = ["heldout_perplexity", "heldout_ppl_mean", "heldout_ppl_p90", "heldout_ppl_p99", "rare_token_prob",
                    "vocab_coverage", "unigram_entropy", "diversity_distinct_2", "diversity_vendi_ngram",
                    "eval_answer_tokens", "train_examples", "collapsed"]
# what the verdicts speak of, and in which direction each gets worse (+1 rises, -1 falls)
VERDICT_METRICS = {"heldout_perplexity": 1, "heldout_ppl_p90": 1, "heldout_ppl_p99": 1, "rare_token_prob": -1,
                   "vocab_coverage": -1, "unigram_entropy": -1, "diversity_distinct_2": -1}


# Decoding strategies as an axis (Drayson et al. 2025: the decoding sets how fast collapse comes), by name
DECODINGS = {"pure": dict(temperature=1.0, top_p=1.0, top_k=0),        # ancestral sampling: the model's own
             "top_p_0.9": dict(temperature=1.0, top_p=0.9, top_k=0),   # nucleus sampling cuts the tail
             "temp_0.7": dict(temperature=0.7, top_p=1.0, top_k=0),    # a colder distribution
             "min_p_0.1": dict(temperature=1.0, top_p=1.0, top_k=0, min_p=0.1),
             "top_k_50": dict(temperature=1.0, top_p=1.0, top_k=50)}
DETECTOR_MIX = {"policy": "replace", "resample_by": "realism", "weight": "odds", "temperature": 1.0}
# arm -> (data-mix policy, decoding name): experiment 2's six arms
# (the detector arm samples at temperature 0.7, where replace collapses fastest, as Drayson et al. test their
# detector on the decoding that degrades most: at pure sampling replace barely moves here, so there would be
# nothing for the detector to prevent; `detector_replace`, at pure sampling, stays available by name)
COLLAPSE_ARMS = {"replace": ("replace", "pure"), "keep_real_0.1": ({"keep_real": 0.1}, "pure"),
                 "accumulate": ("accumulate", "pure"), "replace_top_p_0.9": ("replace", "top_p_0.9"),
                 "replace_temp_0.7": ("replace", "temp_0.7"), "detector_replace_temp_0.7": (DETECTOR_MIX, "temp_0.7")}
MORE_ARMS = {"detector_replace": (DETECTOR_MIX, "pure")}  # by name in `arms`, not run by default


def collapse_configs(root: str | Path, generations: int = 5, n_prompts: int = 32, max_new_tokens: int = 48,
                     steps: int = 4, learning_rate: float = 1e-4, heldout_texts: int | None = 200,
                     heldout_tokens: int = 48, diversity_prompts: int = 24, arms: dict | None = None,
                     policies: dict | None = None, smoke: bool = False, seed: int = 0,
                     model: str = "smollm2-135m") -> dict[str, LoopConfig]:
    """Experiment 2: one arm per (data-mix policy, decoding) pair of `arms` (name -> (policy, decoding name
    in DECODINGS or a dict of temperature/top_p/top_k/min_p); default COLLAPSE_ARMS; a list of names picks
    some of those). Each generation
    continues the model from its last checkpoint (as in the papers) with the same number of optimizer steps
    of the same size, so the arms differ only in what data they learn from. `policies` (name -> policy) is
    the older form: those policies at pure sampling. The detector-weighted arm also runs the `realism` grader
    (its P(real) weights the redraw); every arm's evaluation measures the tails on `heldout_texts` held-out
    passages cut to `heldout_tokens` tokens (sizes chosen so 6 arms x 3 seeds fit in 90 minutes here)."""
    if smoke:
        generations, n_prompts, max_new_tokens, steps, heldout_texts, diversity_prompts = 1, 4, 16, 2, 6, 4
    if policies is not None:
        arms = {name: (policy, "pure") for name, policy in policies.items()}
    arms = arms if arms is not None else COLLAPSE_ARMS
    if not isinstance(arms, dict):  # names of COLLAPSE_ARMS (or MORE_ARMS)
        known = {**COLLAPSE_ARMS, **MORE_ARMS}
        unknown = [name for name in arms if name not in known]
        if unknown:
            from .errors import InputDataError

            raise InputDataError(f"collapse_configs: unknown arm(s) {unknown}.", f"Use some of {list(known)}, "
                                 "or pass a dict name -> (policy, decoding).")
        arms = {name: known[name] for name in arms}
    from .experiments import _train

    common = dict(model=model, task="corpus", task_params={"n": n_prompts}, fresh_prompts=False,
                  generations=generations, select=SelectionPolicy(), real_examples=None, start_from="last",
                  train=_train(epochs=0, max_steps=steps, learning_rate=learning_rate), seed=seed,
                  eval=EvalConfig(heldout_texts=heldout_texts, heldout_tokens=heldout_tokens,
                                  diversity_prompts=diversity_prompts, diversity_tokens=max_new_tokens),
                  collapse=CollapseConfig(max_perplexity_rise=0.10, max_diversity_drop=0.10, max_tail_rise=0.10))
    root = Path(root)
    configs = {}
    for name, (policy, decoding) in arms.items():
        sampling = DECODINGS[decoding] if isinstance(decoding, str) else dict(decoding)
        mix = MixPolicy.parse(policy)  # a policy in any form mix accepts: "replace", {"keep_real": 0.1}, ...
        configs[name] = LoopConfig(run=str(root / name), mix=mix,
                                   graders=["heuristics"] + ([mix.resample_by] if mix.resample_by else []),
                                   generate=GenerateConfig(n_per_prompt=1, max_new_tokens=max_new_tokens, **sampling),
                                   **common)
    return configs


# the arm a detector-weighted arm is compared with: replace at the same decoding (else `replace`)
SAME_DECODING = {"detector_replace_temp_0.7": "replace_temp_0.7", "detector_replace": "replace"}


def versus(frame: pd.DataFrame, metrics: Iterable[str], reference: str = "replace",
           references: dict | None = None) -> pd.DataFrame:
    """Per arm (not its reference) and metric: the arm's last generation minus its reference arm's last
    generation (`references.get(arm, reference)`, default SAME_DECODING: a detector-weighted arm against
    replace at its own decoding), paired per seed (both start from the same base model), as mean, 95%
    half-width over seeds and whether the interval excludes 0 (`clear`)."""
    from .experiments import mean_ci

    references = SAME_DECODING if references is None else references
    last = frame.sort_values("generation").groupby(["arm", "seed"]).tail(1).set_index(["arm", "seed"])
    rows = []
    for arm in dict.fromkeys(frame["arm"]):
        against = references.get(arm, reference)
        if arm == against or against not in last.index.get_level_values(0):
            continue
        for metric in metrics:
            if metric not in last.columns:
                continue
            seeds = sorted(set(last.loc[arm].index) & set(last.loc[against].index))
            diffs = [float(pd.to_numeric(last.loc[(arm, s), metric], errors="coerce"))
                     - float(pd.to_numeric(last.loc[(against, s), metric], errors="coerce")) for s in seeds]
            mean, half = mean_ci(diffs)
            if np.isfinite(mean):
                rows.append({"arm": arm, "metric": metric, "versus": against, "difference_mean": mean,
                             "difference_ci95": half, "clear": bool(np.isfinite(half) and abs(mean) > half),
                             "per_seed": diffs})
    return pd.DataFrame(rows)


def collapse_verdicts(changes: pd.DataFrame, against: pd.DataFrame) -> dict[str, str]:
    """Plain words per arm: which metrics moved from generation 0 by more than the noise (their 95% interval
    over seeds excludes 0) and in which direction, then how the arm ends against `replace`."""
    out = {}
    for arm in dict.fromkeys(changes["arm"]) if len(changes) else []:
        rows = changes[changes["arm"] == arm].set_index("metric")
        worse, better, flat = [], [], []
        for metric, direction in VERDICT_METRICS.items():
            if metric not in rows.index:
                continue
            row = rows.loc[metric]
            text = f"{metric} {row['change_mean']:+.3g} ± {row['change_ci95']:.2g}"
            if not row["clear"]:
                flat.append(metric)
            elif np.sign(row["change_mean"]) == direction:
                worse.append(text)
            else:
                better.append(text)
        parts = [f"worse beyond the noise: {'; '.join(worse)}" if worse else "nothing worse beyond the noise",
                 f"better beyond the noise: {'; '.join(better)}" if better else "",
                 f"within the noise: {', '.join(flat)}" if flat else ""]
        versus_rows = against[against["arm"] == arm] if len(against) else against
        clear = versus_rows[versus_rows["clear"]] if len(versus_rows) else versus_rows
        if len(versus_rows):
            parts.append(f"against {versus_rows['versus'].iloc[0]} at the last generation: " + (
                "; ".join(f"{r.metric} {r.difference_mean:+.3g} ± {r.difference_ci95:.2g}" for r in clear.itertuples())
                if len(clear) else "no difference larger than the noise"))
        out[arm] = f"{arm}: " + ". ".join(p for p in parts if p) + "."
    return out


def run_collapse(root: str | Path, seeds: Iterable[int] = (0, 1, 2), smoke: bool = False, say=None, **sizes) -> dict:
    """Experiment 2 end to end, as the script runs it: every arm of every seed (resumed where finished;
    generation 0 of the arms that sample the same way evaluated once per seed), the long table, its summary,
    the paired changes, the differences against `replace` and the verdicts."""
    from .experiments import run_seeds, seed_configs

    configs = seed_configs(collapse_configs, root, seeds, smoke=smoke, **sizes)
    frame = run_seeds(configs, say=say, share_base_eval=True)
    return {"frame": frame, "configs": configs, **collapse_tables(frame)}


def collapse_tables(frame: pd.DataFrame) -> dict:
    """The summary (mean ± 95% half-width per arm and generation), the paired changes, the differences against
    `replace` and the verdicts of experiment 2's long table."""
    from .experiments import paired_changes, summarize_seeds

    changes = paired_changes(frame, list(VERDICT_METRICS))
    against = versus(frame, list(VERDICT_METRICS))
    return {"summary": summarize_seeds(frame, COLLAPSE_METRICS), "changes": changes, "versus": against,
            "verdicts": collapse_verdicts(changes, against)}


def passage_perplexities(run, generation: int) -> pd.DataFrame | None:
    """The per-passage held-out perplexities of one generation's evaluation (`evaluate` stores them), read
    from the arm's own evaluation or, for a generation 0 evaluated once per seed, from where it was shared."""
    from .store import Run

    run = run if isinstance(run, Run) else Run(run)
    frame = run.eval_run(generation).read_frame(0, "heldout_perplexity")
    shared = run.metrics(generation).get("eval_shared_from")
    if frame is None and shared:
        frame = Run(shared).eval_run(generation).read_frame(0, "heldout_perplexity")
    return frame


def perplexity_distribution(configs: dict, arm: str) -> pd.DataFrame:
    """Every seed's per-passage held-out perplexities of `arm`, one row per (seed, generation, passage), from
    `run_collapse(...)["configs"]` (seed -> arm -> LoopConfig)."""
    from .store import Run

    frames = []
    for seed, arms in configs.items():
        run = Run(arms[arm].run)
        for generation in run.generations():
            frame = passage_perplexities(run, generation)
            if frame is not None:
                frames.append(frame.assign(seed=seed, generation=generation))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["seed", "generation", "perplexity"])
