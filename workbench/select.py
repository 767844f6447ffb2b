"""Acceptance: which graded samples a generation learns from, as one `SelectionPolicy`.

    policy = SelectionPolicy(thresholds={"judge": 0.6, "verifier": 1.0}, dedup="minhash")
    selection = accept(graded, policy)              # or accept(graded, thresholds=..., dedup=...)
    selection.accept_rate, selection.accepted_rows(graded), selection.rejected_by
    selection.save(run, generation=0)               # gen-000/selections/<task>.parquet, with its policy
    Selection.load(run, 0, "arithmetic").reapply(graded)   # the same accepted set again

Rules run in a fixed order and the first rule that rejects a row is recorded for it:
missing score (NaN) -> threshold (per grader, AND; a row passes when score >= threshold) ->
target rate -> top-1-of-K per prompt (RAFT) -> per-prompt cap (ReST-EM) -> dedup -> human labels
('good' accepts, 'bad' rejects, whatever the graders said). `apply_policy` is that rule, once, on plain
arrays: `accept` (DataFrames), `live.LiveSelection` (cached arrays, for sliders) and the threshold explorer
all call it. A threshold schedule (ReST) is `SelectionPolicy.schedule`. An empty selection is a valid
result: `selection.message` says which rule emptied it and how to loosen it.
"""
from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd

from .dedup import (exact_duplicates, minhash_signatures, near_duplicates_embedding,  # noqa: F401 (re-exported)
                    near_duplicates_minhash)
from .errors import InputDataError
from .pairs import PairPolicy, PreferencePairs, pairs  # noqa: F401 (re-exported: workbench.select.pairs)
from .store import LEGACY_SELECTION, SCORE_PREFIX, score_column, score_columns  # noqa: F401 (re-exported)

DEDUP_METHODS = (None, "exact", "minhash", "embedding")


def thresholds_for(schedule: dict[str, Any], generation: int) -> dict[str, float]:
    """A threshold schedule over generations (ReST, Gulcehre et al. 2023): per grader, either a list
    (one threshold per generation, the last repeats) or {"start": a, "step": b, "max": c}."""
    out = {}
    for name, rule in schedule.items():
        if isinstance(rule, (list, tuple)):
            out[name] = float(rule[min(generation, len(rule) - 1)])
        elif isinstance(rule, dict):
            value = rule["start"] + rule.get("step", 0.0) * generation
            out[name] = float(min(value, rule.get("max", value)))
        else:
            out[name] = float(rule)
    return out


def _number(value: Any, path: str) -> float:
    """`value` as a finite float, or an error naming the config key (`select.thresholds.judge`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputDataError(f"{path}: expected a number, got {value!r}.", f"Give {path} a number, e.g. 0.5.")
    if not np.isfinite(float(value)):
        raise InputDataError(f"{path}: expected a finite number, got {value!r}.", f"Give {path} a finite number.")
    return float(value)


@dataclass
class SelectionPolicy:
    """Which rows to accept: every field is one rule of the module docstring; the defaults accept all."""

    thresholds: dict[str, float] = field(default_factory=dict)  # grader -> minimum score (AND; NaN rejects)
    target_rate: float | None = None    # keep this fraction of the rows still standing, best by rank_by
    rank_by: str | None = None          # grader that orders rows for target_rate/top-1/cap/dedup (default: first threshold)
    top1_of_k: bool = False             # keep only the best row per prompt_id (RAFT)
    per_prompt_cap: int | None = None   # at most this many rows per prompt_id (ReST-EM)
    dedup: str | None = None            # None | exact | minhash | embedding (needs embeddings), best-first
    dedup_threshold: float | None = None  # similarity at which two texts are duplicates (minhash 0.8, embedding 0.95)
    schedule: dict[str, Any] | None = None  # grader -> per-generation thresholds (a list, or {start, step, max})
    pairs: PairPolicy | None = None     # preference pairs for DPO ({by, margin, per_prompt}; workbench.pairs)

    def __post_init__(self) -> None:
        self.check()

    def check(self, path: str = "select") -> None:
        """Refuse a mistyped field before any work, naming it by its path (`select.thresholds.judge`)."""
        if not isinstance(self.thresholds, dict):
            raise InputDataError(f"{path}.thresholds: expected a mapping grader -> number, got {self.thresholds!r}.",
                                 f"E.g. {path}.thresholds: {{judge: 0.6}}.")
        for name, value in self.thresholds.items():
            self.thresholds[name] = _number(value, f"{path}.thresholds.{name}")
        if self.target_rate is not None:
            rate = _number(self.target_rate, f"{path}.target_rate")
            if not 0 <= rate <= 1:
                raise InputDataError(f"{path}.target_rate must be in [0, 1], got {rate}.", "Use e.g. 0.3 for 30%.")
        if self.per_prompt_cap is not None and (isinstance(self.per_prompt_cap, bool)
                                                or not isinstance(self.per_prompt_cap, (int, np.integer))
                                                or self.per_prompt_cap < 1):
            raise InputDataError(f"{path}.per_prompt_cap: expected a whole number >= 1, got {self.per_prompt_cap!r}.",
                                 f"E.g. {path}.per_prompt_cap: 2, or leave it out.")
        if not isinstance(self.top1_of_k, bool):
            raise InputDataError(f"{path}.top1_of_k: expected true or false, got {self.top1_of_k!r}.", "Use true/false.")
        if self.dedup not in DEDUP_METHODS:
            raise InputDataError(f"{path}.dedup: unknown method {self.dedup!r}.", f"Use one of {list(DEDUP_METHODS)}.")
        if self.dedup_threshold is not None:
            _number(self.dedup_threshold, f"{path}.dedup_threshold")
        if self.rank_by is not None and not isinstance(self.rank_by, str):
            raise InputDataError(f"{path}.rank_by: expected a grader name, got {self.rank_by!r}.", "E.g. rank_by: judge.")
        for name, rule in (self.schedule or {}).items():
            values = rule if isinstance(rule, (list, tuple)) else [rule.get(k) for k in ("start", "step", "max")
                                                                    if k in rule] if isinstance(rule, dict) else [rule]
            if isinstance(rule, dict) and "start" not in rule:
                raise InputDataError(f"{path}.schedule.{name}: needs a start.", "E.g. {start: 0.5, step: 0.1, max: 0.9}.")
            for value in values:
                _number(value, f"{path}.schedule.{name}")
        if isinstance(self.pairs, dict):
            from .config import from_fields

            self.pairs = from_fields(PairPolicy, self.pairs, f"{path}.pairs")
        elif self.pairs is not None and not isinstance(self.pairs, PairPolicy):
            raise InputDataError(f"{path}.pairs: expected a mapping {{by, margin, per_prompt}}, got {self.pairs!r}.",
                                 f"E.g. {path}.pairs: {{by: judge, margin: 0.1}}.")

    @classmethod
    def from_dict(cls, values: dict | "SelectionPolicy" | None, path: str = "select") -> "SelectionPolicy":
        if isinstance(values, cls):
            return values
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputDataError(f"{path}: unknown key(s) {unknown}.", f"Use only: {sorted(known)}.")
        thresholds = values.get("thresholds") or {}
        if isinstance(thresholds, dict) and any(isinstance(v, (list, tuple, dict)) for v in thresholds.values()):
            # the loop's older config shape: a schedule written under thresholds
            scheduled = {k: v for k, v in thresholds.items() if isinstance(v, (list, tuple, dict))}
            values["schedule"] = {**scheduled, **(values.get("schedule") or {})}
            values["thresholds"] = {k: v for k, v in thresholds.items() if k not in scheduled}
        policy = cls.__new__(cls)  # not cls(**values): check() must name the keys under `path`
        for f in fields(cls):
            default = f.default_factory() if f.default_factory is not MISSING else f.default
            setattr(policy, f.name, values.get(f.name, default))
        policy.check(path)
        return policy

    def to_dict(self) -> dict:
        return asdict(self)

    def for_generation(self, generation: int) -> "SelectionPolicy":
        """This policy with the schedule's thresholds for `generation` (the schedule itself dropped)."""
        if not self.schedule:
            return self
        values = self.to_dict()
        values["thresholds"] = {**self.thresholds, **thresholds_for(self.schedule, generation)}
        values["schedule"] = None
        return SelectionPolicy(**values)

    @property
    def rank_name(self) -> str | None:
        return self.rank_by or next(iter(self.thresholds), None)

    def graders(self) -> list[str]:
        """The graders whose scores this policy reads."""
        return list(dict.fromkeys(list(self.thresholds) + ([self.rank_by] if self.rank_by else [])
                                  + ([self.pairs.by] if self.pairs else [])))

    @classmethod
    def from_saved(cls, params: dict) -> "SelectionPolicy":
        """The policy of a selection saved by any version: {"policy": {...}} (now), accept()'s keyword
        arguments, or the threshold explorer's {"policy": "target_rate", "thresholds": ...}."""
        if isinstance(params.get("policy"), dict):
            return cls.from_dict(params["policy"])
        mode = params.get("policy")  # the explorer's old dropdown value
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in params.items() if k in known}
        if mode is not None:
            values["top1_of_k"] = mode == "top1_of_k"
            values["target_rate"] = params.get("target_rate") if mode == "target_rate" else None
        return cls.from_dict(values)


def _legacy_parts(params: dict) -> bool:
    """Whether saved params are combine()'s old {name: params} (no key of a policy or of the new shape)."""
    known = {f.name for f in fields(SelectionPolicy)} | {"policy", "labels", "human_labels", "source", "tasks", "parts"}
    return bool(params) and not (set(params) & known) and all(isinstance(v, dict) for v in params.values())


@dataclass
class Selection:
    """The outcome of `accept`: a mask over the input rows, why each rejected row was rejected, and the
    policy and human labels that produced it (so a saved selection can be reproduced with `reapply`)."""

    mask: np.ndarray                       # True = accepted, one per input row, in input order
    rejected_by: np.ndarray                # "" for accepted rows, else the first rule that rejected the row
    sample_ids: np.ndarray                 # the rows' sample_id (or index) values
    params: dict = field(default_factory=dict)  # {"policy", "labels", "tasks", "source"} or {"parts": {name: params}}
    counts: dict = field(default_factory=dict)  # rows rejected per rule, NaN scores per grader

    @property
    def n_accepted(self) -> int:
        return int(self.mask.sum())

    @property
    def accept_rate(self) -> float:
        return float(self.mask.mean()) if len(self.mask) else 0.0

    @property
    def message(self) -> str:
        if len(self.mask) == 0:
            return "No samples to select from."
        if self.n_accepted:
            return f"Accepted {self.n_accepted} of {len(self.mask)} samples ({100 * self.accept_rate:.1f}%)."
        worst = max(self.counts.get("rejected_by", {}).items(), key=lambda kv: kv[1], default=("?", 0))[0]
        return (f"No sample was accepted out of {len(self.mask)}: the rule '{worst}' rejected the most. "
                "Lower that threshold, raise the target rate, or turn off dedup to accept some.")

    @property
    def policy(self) -> SelectionPolicy | dict[str, SelectionPolicy]:
        """The policy (or, for a combined selection, name -> policy) that made this selection."""
        if "parts" in self.params:
            return {name: SelectionPolicy.from_saved(part) for name, part in self.params["parts"].items()}
        return SelectionPolicy.from_saved(self.params)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.params.get("labels") or self.params.get("human_labels") or {})

    def accepted_rows(self, samples: pd.DataFrame) -> pd.DataFrame:
        return samples[self.mask].reset_index(drop=True)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": self.sample_ids, "accepted": self.mask, "rejected_by": self.rejected_by})

    def default_name(self) -> str:
        """The task(s) it selected from, e.g. "arithmetic" or "arithmetic+corpus" (a combined selection)."""
        tasks = self.params.get("tasks") or list(self.params.get("parts", {}))
        return "+".join(map(str, tasks)) if tasks else "all"

    def save(self, run, generation: int = 0, name: str | None = None) -> str:
        """Write the selection (with its policy as JSON in the parquet metadata) to
        gen-XXX/selections/<name>.parquet; `name` defaults to its task(s). Returns the name."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        from .store import arrow_table, atomic_write_bytes

        name = name or self.default_name()
        table = arrow_table(self.to_frame(), {b"workbench_selection": self.params})
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        atomic_write_bytes(run.selection_path(generation, name), buffer.getvalue().to_pybytes())
        return name

    def to_dataset(self, run, generation: int = 0, task: str | None = None):
        """The accepted samples of `run`'s generation as a `datasets.Dataset` (see `workbench.export`; a
        dataset card comes with `workbench.export.export` and `workbench export`)."""
        from .export import samples_dataset

        return samples_dataset(self, run, generation, task)

    @classmethod
    def load(cls, run, generation: int = 0, name: str | None = None) -> "Selection":
        """A saved selection; `name` may be left out when the generation has exactly one."""
        import json

        import pyarrow.parquet as pq

        names = run.selections(generation)
        if name is None:
            if len(names) != 1:
                raise InputDataError(f"Generation {generation} of {run.path} has {len(names)} saved selections "
                                     f"({names}).", "Pass name=... (one of them)." if names else
                                     "Save one first (Selection.save, or the explorer's save button).")
            name = names[0]
        path = run.selection_path(generation, name)
        if not path.exists():
            raise InputDataError(f"No selection named {name!r} in generation {generation} of {run.path}.",
                                 f"Saved selections: {names or 'none'}.")
        table = pq.read_table(path)
        params = json.loads((table.schema.metadata or {}).get(b"workbench_selection", b"{}"))
        if _legacy_parts(params):  # combine()'s old shape: {task: params}
            params = {"parts": params}
        frame = table.to_pandas()
        return cls(mask=frame["accepted"].to_numpy(dtype=bool), rejected_by=frame["rejected_by"].astype(str).to_numpy(),
                   sample_ids=frame["sample_id"].to_numpy(), params=params)

    def reapply(self, samples: pd.DataFrame, embeddings: np.ndarray | None = None) -> "Selection":
        """This selection's policy and labels applied again to `samples` (per task for a combined one)."""
        if "parts" not in self.params:
            return accept(samples, self.policy, labels=self.labels, embeddings=embeddings)
        parts = {}
        for name, part in self.params["parts"].items():
            rows = samples[samples["task"] == name] if "task" in samples.columns else samples
            part_labels = part.get("labels") or part.get("human_labels") or {}
            parts[name] = accept(rows, SelectionPolicy.from_saved(part), labels=part_labels)
        return combine(parts)


def apply_policy(policy: SelectionPolicy, scores: dict[str, np.ndarray], n: int,
                 prompt_ids: np.ndarray | None = None, texts: list[str] | None = None,
                 embeddings: np.ndarray | None = None, sample_ids: np.ndarray | None = None,
                 labels: dict[str, str] | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """The selection rule on plain arrays: (mask, rejected_by, counts). `scores`: grader -> float array
    (NaN = unscored). `texts` are needed only for text dedup, `sample_ids` only for labels."""
    mask = np.ones(n, dtype=bool)
    reason = np.full(n, "", dtype=object)
    counts: dict[str, Any] = {"nan": {}}

    def reject(rows: np.ndarray, rule: str) -> None:
        newly = mask & rows
        reason[newly] = rule
        mask[newly] = False

    for name in policy.graders():
        isnan = ~np.isfinite(scores[name])
        counts["nan"][name] = int(isnan.sum())
        reject(isnan, f"nan:{name}")
    with np.errstate(invalid="ignore"):
        for name, value in policy.thresholds.items():
            reject(~(scores[name] >= value), f"threshold:{name}")
    rank_name = policy.rank_name
    rank = np.where(np.isfinite(scores[rank_name]), scores[rank_name], -np.inf) if rank_name else np.zeros(n)
    order = np.lexsort((np.arange(n), -rank))  # best first, ties by input order (stable, reproducible)
    if policy.target_rate is not None:
        standing = order[mask[order]]
        drop = np.zeros(n, dtype=bool)
        drop[standing[int(np.floor(policy.target_rate * len(standing) + 1e-9)):]] = True
        reject(drop, "target_rate")
    if policy.top1_of_k or policy.per_prompt_cap:
        cap = 1 if policy.top1_of_k else int(policy.per_prompt_cap)
        taken: dict[Any, int] = {}
        drop = np.zeros(n, dtype=bool)
        for i in order:
            if mask[i]:
                taken[prompt_ids[i]] = taken.get(prompt_ids[i], 0) + 1
                drop[i] = taken[prompt_ids[i]] > cap
        reject(drop, "top1_of_k" if policy.top1_of_k else "per_prompt_cap")
    if policy.dedup:
        reject(_duplicates(policy, order[mask[order]], n, texts, embeddings), f"dedup:{policy.dedup}")
    if labels:  # human verdicts override the graders
        verdict = pd.Series(sample_ids).map(labels).to_numpy()
        good = verdict == "good"
        mask[good], reason[good] = True, ""
        for rule in ("bad", "exclude"):  # 'exclude': kept out by hand without a quality verdict
            rows = verdict == rule
            reason[rows & mask] = f"human:{rule}"
            mask[rows] = False
    counts["rejected_by"] = {rule: int((reason == rule).sum()) for rule in dict.fromkeys(reason[~mask])}
    return mask, reason.astype(str), counts


def _duplicates(policy: SelectionPolicy, standing: np.ndarray, n: int, texts, embeddings) -> np.ndarray:
    """Rows (of n) that duplicate a better-ranked standing row."""
    if policy.dedup == "exact":
        duplicate = exact_duplicates([texts[i] for i in standing])
    elif policy.dedup == "minhash":
        duplicate = near_duplicates_minhash([texts[i] for i in standing], threshold=policy.dedup_threshold or 0.8)
    else:
        duplicate = near_duplicates_embedding(np.asarray(embeddings)[standing], threshold=policy.dedup_threshold or 0.95)
    drop = np.zeros(n, dtype=bool)
    drop[standing[duplicate]] = True
    return drop


def check_inputs(policy: SelectionPolicy, graders: list[str], n: int, has_prompt_ids: bool,
                 embeddings: np.ndarray | None) -> None:
    """Clear errors for a policy these rows cannot serve (an unknown grader, dedup without embeddings...)."""
    missing = [g for g in policy.graders() if g not in graders]
    if missing:
        raise InputDataError(f"Unknown grader(s) {missing}: no column {[score_column(m) for m in missing]} in the "
                             "samples.", f"Use one of the graded columns: {graders}, or grade first.")
    if policy.dedup == "embedding" and (embeddings is None or len(embeddings) != n):
        raise InputDataError("dedup='embedding' needs one embedding per sample.", "Pass embeddings=... (n rows).")
    if (policy.top1_of_k or policy.per_prompt_cap) and not has_prompt_ids:
        raise InputDataError("top1_of_k / per_prompt_cap need a prompt_id column.", "Select on generate()'s output.")


def selection_params(policy: SelectionPolicy, labels: dict | None, tasks: list, source: str) -> dict:
    """What a Selection records so `reapply` can reproduce it."""
    return {"policy": policy.to_dict(), "labels": dict(labels or {}), "tasks": [str(t) for t in tasks],
            "source": source}


def accept(samples: pd.DataFrame, policy: SelectionPolicy | dict | None = None, *, labels: dict | None = None,
           embeddings: np.ndarray | None = None, text_column: str = "completion", **policy_fields) -> Selection:
    """Select rows of a graded samples table (score__<grader> columns) by a `SelectionPolicy` (or its
    fields as keywords: `accept(graded, thresholds={"judge": 0.6}, dedup="minhash")`); see the module
    docstring for the order of rules. `labels`: sample_id -> 'good'/'bad' human verdicts (override)."""
    if policy is not None and policy_fields:
        raise InputDataError("Pass either a SelectionPolicy or its fields as keywords, not both.",
                             "E.g. accept(graded, SelectionPolicy(thresholds=...)).")
    policy = SelectionPolicy.from_dict(policy if policy is not None else policy_fields)
    if policy.schedule:
        raise InputDataError("This policy has a threshold schedule: which generation's thresholds apply?",
                             "Use accept(samples, policy.for_generation(g)).")
    n = len(samples)
    columns = score_columns(samples)
    check_inputs(policy, list(columns), n, "prompt_id" in samples.columns, embeddings)
    scores = {g: pd.to_numeric(samples[columns[g]], errors="coerce").to_numpy(dtype=float) for g in policy.graders()}
    texts = samples[text_column].astype(str).tolist() if policy.dedup in ("exact", "minhash") else None
    ids = samples["sample_id"].to_numpy() if "sample_id" in samples.columns else samples.index.to_numpy()
    prompt_ids = samples["prompt_id"].to_numpy() if "prompt_id" in samples.columns else None
    mask, reason, counts = apply_policy(policy, scores, n, prompt_ids, texts, embeddings, ids, labels)
    tasks = sorted(samples["task"].dropna().unique().tolist()) if "task" in samples.columns else []
    return Selection(mask=mask, rejected_by=reason, sample_ids=ids,
                     params=selection_params(policy, labels, tasks, "accept"), counts=counts)


def combine(selections: dict[str, Selection]) -> Selection:
    """One selection over several tables (e.g. one per task), in the given order; params keyed by name."""
    parts = list(selections.values())
    counts: dict[str, Any] = {"rejected_by": {}}
    for part in parts:
        for rule, count in part.counts.get("rejected_by", {}).items():
            counts["rejected_by"][rule] = counts["rejected_by"].get(rule, 0) + count
    return Selection(mask=np.concatenate([p.mask for p in parts]) if parts else np.zeros(0, bool),
                     rejected_by=np.concatenate([p.rejected_by for p in parts]) if parts else np.zeros(0, str),
                     sample_ids=np.concatenate([p.sample_ids for p in parts]) if parts else np.zeros(0),
                     params={"parts": {name: p.params for name, p in selections.items()}}, counts=counts)
