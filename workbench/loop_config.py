"""The loop's configuration: one typed dataclass per section (GenerateConfig, SelectionPolicy, MixPolicy,
TrainConfig, EvalConfig, CollapseConfig, PriceConfig, TrackConfig) under `LoopConfig`. `LoopConfig.from_dict` /
`from_yaml` check every key against its field's type and name a wrong one by its path
(`select.thresholds.judge: expected a number, got 'high'`) before any work is done.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

from .config import (check_section, config_section, field_value, from_fields, given_fields, join_path,
                     typed_value)
from .errors import InputDataError
from .evaluate import DIVERSITY_KEYS
from .sampling import SamplingParams
from .mix import parse_mix
from .select import SelectionPolicy
from .store import SCORE_PREFIX
from .tracking import TrackConfig
from .train import TrainConfig

GRADERS = ("verifier", "verifier_strict", "judge", "perplexity", "heuristics", "consistency", "pairwise", "certainty",
           "panel", "realism")
DETECTORS = ("realism",)  # graders whose score is a P(real), usable by a detector-weighted mix
# what `panel` combines (a logistic regression fitted on at most 32 labels of the lenient `verifier`): the
# self-graders among these that the loop's list runs before it
PANEL_INPUTS = ("consistency", "pairwise", "judge", "certainty")


# ----------------------------------------------------------------------------------- the sections

@config_section
class GenerateConfig:
    """How each generation samples: `workbench.generate`'s arguments (the seed is the loop's seed +
    generation). A `generate:` section starts from these defaults, which are generate()'s own; the loop's
    default section is n_per_prompt 4, temperature 0.8, max_new_tokens 32."""

    n_per_prompt: int = 1               # samples per prompt (K for best-of-K, RAFT, ReST-EM)
    temperature: float = 0.8            # 0 = greedy
    top_p: float = 0.95                 # nucleus sampling mass; 1.0 disables it
    top_k: int = 50                     # 0 disables it
    min_p: float = 0.0                  # keep tokens with p >= min_p x the top token's; 0 disables it
    max_new_tokens: int = 128           # completion budget per sample
    system_prompt: str | None = None    # None: the chat template's default system prompt
    batch_size: int | None = None       # sequences decoded together (None: from the model and free memory)
    checkpoint_every: int | None = None  # samples per part written to the run (None: 2 x batch_size, or 128)
    engine: str = "auto"                # auto | fast (continuous batching) | hf (transformers generate)
    quantize: str | None = None         # None | int8 (fast engine only)
    max_cache_bytes: int | None = None  # KV-cache budget of the fast engine (None: a quarter of free memory)

    def check(self) -> None:
        SamplingParams(n_per_prompt=self.n_per_prompt, temperature=self.temperature, top_p=self.top_p,
                       top_k=self.top_k, min_p=self.min_p, max_new_tokens=self.max_new_tokens).check()
        if (self.batch_size is not None and self.batch_size < 1) or \
                (self.checkpoint_every is not None and self.checkpoint_every < 1):
            raise InputDataError("batch_size and checkpoint_every must be >= 1.", "E.g. batch_size: 64.")
        if self.engine not in ("auto", "fast", "hf") or self.quantize not in (None, "int8"):
            raise InputDataError(f"engine {self.engine!r} / quantize {self.quantize!r} unknown.",
                                 "engine: auto | fast | hf; quantize: int8 or leave it out.")


@dataclass
class MixPolicy:
    """What each generation fine-tunes on (workbench/mix.py). YAML: `replace`, `accumulate`,
    `{keep_real: 0.1}` or `{accumulate_subsample: 512}` (or the string 'keep_real(0.1)'); detector-weighted
    (Drayson et al. 2025): `{policy: replace, resample_by: realism, weight: odds, temperature: 1.0}`, which
    redraws each generation's accepted rows by the `realism` grader's P(real) before the policy mixes them."""

    name: str = "replace"               # replace | accumulate | keep_real | accumulate_subsample
    value: float | None = None          # keep_real: share of real rows in the set; accumulate_subsample: rows drawn
    resample_by: str | None = None      # a detector grader ("realism"): resample the new rows by its P(real)
    weight: str = "odds"                # odds: p / (1 - p) (importance weight) | prob: p (workbench.mix.detector_weights)
    temperature: float = 1.0            # weights ** (1 / temperature): > 1 flattens towards plain replace

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        parse_mix(self.spec)
        if self.resample_by is not None:
            from .mix import detector_weights

            if self.resample_by not in DETECTORS:
                raise InputDataError(f"mix.resample_by: {self.resample_by!r} is not a detector grader.",
                                     f"Use one of {list(DETECTORS)}.")
            detector_weights([0.5], self.weight, self.temperature)  # the weight's name and temperature

    @property
    def spec(self):
        """The policy as `workbench.mix.mix` takes it."""
        return self.name if self.value is None else {self.name: self.value}

    @classmethod
    def parse(cls, form, path: str = "mix") -> "MixPolicy":
        if isinstance(form, cls):
            return form
        if isinstance(form, dict) and "policy" in form:  # the detector-weighted form
            extra = sorted(set(form) - {"policy", "resample_by", "weight", "temperature"})
            if extra:
                raise InputDataError(f"{path}: unknown key(s) {extra}.",
                                     "Use policy, resample_by, weight and temperature.")
            base = cls.parse(form["policy"], join_path(path, "policy"))
            if "temperature" in form:
                typed_value(form["temperature"], float, join_path(path, "temperature"))
            policy = cls(base.name, base.value, form.get("resample_by"), form.get("weight", "odds"),
                         float(form.get("temperature", 1.0)))
            policy._form = copy.deepcopy(form)
            return policy
        if isinstance(form, dict) and len(form) == 1:
            (name, value), = form.items()
            typed_value(value, float, join_path(path, name))
        elif not isinstance(form, str):
            raise InputDataError(f"{path}: unknown data-mix policy {form!r}.",
                                 "Use replace, accumulate, {keep_real: 0.1} or {accumulate_subsample: 512}.")
        try:
            name, value = parse_mix(form)
        except InputDataError as exc:
            raise InputDataError(f"{path}: {exc.problem[0].lower()}{exc.problem[1:]}", exc.fix) from None
        except ValueError:  # float('x') of 'keep_real(x)'
            raise InputDataError(f"{path}: unknown data-mix policy {form!r}.",
                                 "Use replace, accumulate, {keep_real: 0.1} or {accumulate_subsample: 512}.") from None
        policy = cls(name, value)
        policy._form = copy.deepcopy(form)  # the run's record keeps the form it was written in
        return policy

    def to_record(self):
        if self.resample_by is not None and not hasattr(self, "_form"):
            return {"policy": self.spec, "resample_by": self.resample_by, "weight": self.weight,
                    "temperature": self.temperature}
        return copy.deepcopy(getattr(self, "_form", self.spec))


def _select(values, path: str) -> SelectionPolicy:
    """`select:` as a SelectionPolicy (its own path-named checks; the older shape with a schedule under
    `thresholds` is accepted), remembering the keys given."""
    policy = SelectionPolicy.from_dict(values, path=path)
    if not isinstance(values, SelectionPolicy):
        policy._given = tuple(values or {})
    return policy


@config_section
class EvalConfig:
    """What `workbench.evaluate.evaluate` measures of each generation's model."""

    heldout_problems: int = 200         # verifiable tasks: greedy accuracy on this many problems never trained on
    answer_tokens: int = 24             # completion budget for those answers
    heldout_texts: int | None = None    # held-out real passages for perplexity (None: all of them, ~230)
    heldout_tokens: int = 256           # each passage cut to this many tokens for the perplexity pass
    tails: bool = True                  # tail metrics: per-passage perplexity p90/p99, rare-token probability,
                                        # vocabulary coverage and unigram entropy, and gen 0's bootstrap noise
    diversity_prompts: int = 32         # free generations from fixed prompts for the diversity report
    diversity_tokens: int = 64          # completion budget of each free generation
    diversity_task: str = "auto"        # task of those prompts (auto: held-out corpus for corpus, else instructions)
    anchor_prompts: int = 16            # with select.pairs: generation 0's prompts whose answers (all K) every
                                        # generation's judge re-scores (the frozen anchor set: score inflation)


@config_section
class CollapseConfig:
    """The collapse monitor (workbench.metrics.collapse.collapse_flags), relative to generation 0."""

    max_perplexity_rise: float = 0.25   # flag when held-out perplexity rises more than this (0.25 = +25%)
    max_diversity_drop: float = 0.25    # flag when the diversity metric falls more than this (0.25 = -25%)
    diversity_metric: str = "distinct_2"  # which diversity_report value: distinct_1, distinct_2, self_bleu, ...
    max_length_rise: float = 0.5        # flag when held-out answers grow longer than this (0.5 = +50% tokens)
    max_score_inflation: float = 0.1    # flag when the judge's mean score on the frozen anchor set rises more
    max_tail_rise: float = 0.25         # flag when the 90th percentile of per-passage perplexity rises more
    max_rare_drop: float = 0.25         # flag when the probability of the real text's rare tokens falls more
    max_coverage_drop: float = 0.25     # flag when vocabulary coverage of free generations falls more
                                        # (every relative limit is raised to gen 0's bootstrap noise, if larger)
    stop: bool = False                  # end the loop at the first flagged generation

    def check(self) -> None:
        if self.diversity_metric not in DIVERSITY_KEYS:
            raise InputDataError(f"diversity_metric {self.diversity_metric!r} is not measured.",
                                 f"Use one of {list(DIVERSITY_KEYS)}.")


@config_section
class PriceConfig:
    """What compute costs, for the cost per accepted sample and per accuracy point. A `price:` section starts
    from zeros; the loop's default section is cpu_hour 0.10, gpu_hour 3.00, per_million_tokens 0.0."""

    cpu_hour: float = 0.0               # per hour of a CPU machine
    gpu_hour: float = 0.0               # per hour of a GPU machine (when training ran on CUDA)
    per_million_tokens: float = 0.0     # per million tokens generated and trained on (an API's price)


@dataclass
class LoopConfig:
    run: str = "data/runs/loop"            # run folder (relative paths: to the current directory)
    model: str = "smollm2-135m"            # base model spec
    task: str = "arithmetic"               # arithmetic | instructions | corpus | a prompts file
    task_params: dict = field(default_factory=lambda: {"n": 64})  # arguments of the task (n prompts per generation)
    fresh_prompts: bool = True             # new prompts each generation (task seed + generation); False: same set
    generations: int = 3                   # fine-tuning rounds; models 0..generations are evaluated
    generate: GenerateConfig = field(      # sampling (a section written in YAML starts from generate()'s defaults)
        default_factory=lambda: GenerateConfig(n_per_prompt=4, temperature=0.8, max_new_tokens=32))
    graders: list[str] = field(default_factory=lambda: ["verifier"])  # some of GRADERS
    select: SelectionPolicy = field(       # which samples are kept; thresholds may follow a `schedule`
        default_factory=lambda: SelectionPolicy(thresholds={"verifier": 1.0}), metadata={"parse": _select})
    mix: MixPolicy = field(default_factory=MixPolicy, metadata={"parse": MixPolicy.parse})  # the training set
    real_examples: int | None = 256        # real (human) examples available to the mix (None: all the task has)
    start_from: str = "base"               # base: each generation fine-tunes the base model (ReST-EM, STaR);
                                           # last: continue from the previous checkpoint
    train: TrainConfig = field(default_factory=TrainConfig)  # fine-tuning (seed: the loop's seed + generation)
    eval: EvalConfig = field(default_factory=EvalConfig)      # what is measured of each generation's model
    collapse: CollapseConfig = field(default_factory=CollapseConfig)  # when to flag (and stop) a collapse
    price: PriceConfig = field(default_factory=lambda: PriceConfig(cpu_hour=0.10, gpu_hour=3.00,
                                                                   per_million_tokens=0.0))
    seed: int = 0
    track: TrackConfig = field(default_factory=TrackConfig)  # experiment tracking (workbench/tracking.py): off
                                           # unless track.project is set; not part of the run's record

    def __post_init__(self) -> None:
        # a section may be given as its dataclass or as what YAML gives (a dict; a string for mix)
        self.run = os.fspath(self.run) if isinstance(self.run, os.PathLike) else self.run
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            setattr(self, f.name, field_value(f, hints[f.name], getattr(self, f.name), f.name))
        self.check()

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
        return from_fields(cls, values)

    def check(self) -> None:
        if self.generations < 0:
            raise InputDataError(f"generations: must be >= 0, got {self.generations}.", "E.g. generations: 3.")
        if self.start_from not in ("base", "last"):
            raise InputDataError(f"start_from: must be 'base' or 'last', got {self.start_from!r}.", "Pick one.")
        unknown = [g for g in self.graders if g not in GRADERS]
        if unknown:
            raise InputDataError(f"graders: unknown grader(s) {unknown}.", f"Use some of {list(GRADERS)}.")
        if "panel" in self.graders:
            before, after = (self.graders[:self.graders.index("panel")], self.graders[self.graders.index("panel") + 1:])
            if "verifier" not in before or not any(g in PANEL_INPUTS for g in before) or \
                    any(g in PANEL_INPUTS for g in after):
                raise InputDataError(
                    f"graders: 'panel' combines the self-graders {list(PANEL_INPUTS)} listed before it and fits on "
                    f"the labels of 'verifier', which must run before it too; got {self.graders}.",
                    "List them first, e.g. graders: [verifier, consistency, judge, panel].")
        for name in ("generate", "select", "mix", "train", "eval", "collapse", "track"):
            check_section(getattr(self, name), name)
        if self.mix.resample_by is not None and self.mix.resample_by not in self.graders:
            raise InputDataError(
                f"mix: resamples by the {self.mix.resample_by!r} grader's scores, but graders {self.graders} "
                f"does not run it, so the run would have no {self.mix.resample_by} scores.",
                f"Add '{self.mix.resample_by}' to graders, e.g. graders: [heuristics, {self.mix.resample_by}].")
        if self.train.method == "dpo" and self.select.pairs is None:
            raise InputDataError("train.method: dpo learns from preference pairs, but select.pairs is not set.",
                                 "Add e.g. select: {pairs: {by: judge, margin: 0.1}} (and n_per_prompt >= 2).")
        read = list(self.select.graders()) + list(self.select.schedule or {})
        missing = [name for name in read if name.removeprefix(SCORE_PREFIX) not in self.graders]
        if missing:
            raise InputDataError(f"select: reads grader(s) {missing}, which are not in graders {self.graders}.",
                                 "Add them to graders, or select by the graders the loop runs.")

    def to_record(self) -> dict:
        """What the run's config.yaml records under `loop` (a rerun must match it): every top-level field, and
        each section as the fields that were set (as its YAML was written). The loop recorded this shape
        before its config was typed, so run folders made then still resume. `track` is left out: where the
        metrics are also logged changes no result, so turning tracking on must not refuse a resume."""
        record = {}
        for f in fields(self):
            if f.name == "track":
                continue
            value = getattr(self, f.name)
            if isinstance(value, MixPolicy):
                record[f.name] = value.to_record()
            elif dataclasses.is_dataclass(value):
                record[f.name] = given_fields(value)
            else:
                record[f.name] = copy.deepcopy(value)
        select, policy = record["select"], self.select
        if "thresholds" in select and "schedule" not in select and policy.schedule:
            select["thresholds"] = {**policy.thresholds, **policy.schedule}  # written as a schedule under thresholds
        return json.loads(json.dumps(record))

    def train_config(self, generation: int) -> TrainConfig:
        """The fine-tune of `generation`: the train section, seeded by the loop unless it sets its own seed."""
        if "seed" in given_fields(self.train):
            return self.train
        return dataclasses.replace(self.train, seed=self.seed + generation)


def _as_config(config: LoopConfig | dict | str | Path) -> LoopConfig:
    if isinstance(config, (str, Path)):
        return LoopConfig.from_yaml(config)
    if isinstance(config, dict):
        return LoopConfig.from_dict(config)
    config.__post_init__()  # fields may have been set since (cmd_loop's --run): check them again
    return config


