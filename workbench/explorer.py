"""The threshold explorer's state, in plain Python: a graded table, one `SelectionPolicy`, human labels,
and what they select. `widgets.ThresholdExplorer` is the ipywidgets view over it; tests drive this
class without a browser.

    state = ExplorerState(run=run)                 # or ExplorerState(graded)
    state.set_thresholds(judge=0.7); state.set_mode("target_rate", target_rate=0.3)
    state.summary(); state.accepted_mask; state.save_selection()

Every change goes through `LiveSelection.select`, the same rule `select.accept` applies, so what the
explorer shows is what `accept(graded, state.policy, labels=state.labels)` returns. Setters never raise:
a bad value (NaN, out of range, unknown grader) or an empty selection sets `message` instead.
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd

from .errors import InputDataError
from .live import LiveSelection
from .metrics.audit import cohen_kappa, judge_audit
from .select import Selection, SelectionPolicy, score_column, score_columns
from .store import HUMAN_LABELS

EXPLORER_MODES = ("thresholds", "target_rate", "top1_of_k")  # the mode dropdown: which rule follows the thresholds
DIVERSITY_KEYS = ("distinct_1", "distinct_2", "distinct_3", "compression_ratio", "vendi_embedding")


class ExplorerState:
    """Parameters are stored as given; the policy, labels and accepted mask live in attributes."""

    def __init__(self, samples: pd.DataFrame | None = None, run=None, generation: int = 0, embeddings=None,
                 verifier: str = "verifier", text_column: str = "completion", reviewer: str | None = None,
                 examples: int = 6, selection: str | None = None):
        if samples is None:
            if run is None:
                raise InputDataError("ThresholdExplorer needs samples or a run.", "Pass samples=graded or run=Run(...).")
            samples = run.graded(generation)
        self.samples = samples.reset_index(drop=True)
        self.graders = list(score_columns(self.samples))
        if not self.graders:
            raise InputDataError("The samples have no score__<grader> columns.", "Grade them first (workbench.grade).")
        self.run, self.generation, self.verifier, self.text_column = run, generation, verifier, text_column
        self.reviewer, self.n_examples = reviewer, examples
        self.ranges = {}
        for name in self.graders:
            values = self._scores(name)
            finite = values[np.isfinite(values)]
            self.ranges[name] = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        self.policy = SelectionPolicy(thresholds={n: self.ranges[n][0] for n in self.graders if n != verifier})
        self.target_rate = 0.5  # the rate slider's value, used when the mode is target_rate
        if selection is not None:  # start from a saved selection's policy
            if run is None:
                raise InputDataError("selection=... needs run=Run(...).", "Pass the run the selection was saved in.")
            saved = Selection.load(run, generation, selection).policy
            if isinstance(saved, dict):
                raise InputDataError(f"Selection {selection!r} combines several tasks.",
                                     "Open the explorer on one task's selection.")
            self.policy = saved
            self.target_rate = saved.target_rate if saved.target_rate is not None else self.target_rate
        self.message = ""
        self.labels = run.labels(generation) if run is not None else {}
        # judge-bias probes stored with the run (notebook 02 writes probes_<grader>), shown beside the audit
        self.probes = {name: frame for name in self.graders
                       if run is not None and (frame := run.read_frame(generation, f"probes_{name}")) is not None}
        self.live = LiveSelection(self.samples, embeddings=embeddings, text_column=text_column)
        self._all = self.live.update({}, mask=np.ones(len(self.samples), dtype=bool))
        self._audit_cache: dict = {}  # (grader, threshold) -> audit; the AUC does not move with the slider
        self._map = None  # the data map's MapLayout, made on first use (UMAP costs seconds)
        self.map_color_by = "status"  # what the map's points are coloured by (datamap.color_values)
        self.map_selected = np.zeros(0, dtype=int)  # rows picked on the map with the box or lasso tool
        self._selection: Selection | None = None
        self._current = self._all
        self._recompute()

    # ------------------------------------------------------------------ derived views of the policy
    @property
    def thresholds(self) -> dict[str, float]:
        return self.policy.thresholds

    @property
    def dedup(self) -> str | None:
        return self.policy.dedup

    @property
    def mode(self) -> str:
        return "top1_of_k" if self.policy.top1_of_k else "target_rate" if self.policy.target_rate is not None \
            else "thresholds"

    @property
    def accepted_mask(self) -> np.ndarray:
        return self._selection.mask

    def _scores(self, name: str) -> np.ndarray:
        return pd.to_numeric(self.samples[score_column(name)], errors="coerce").to_numpy(dtype=float)

    # ------------------------------------------------------------------ changes
    def set_thresholds(self, **thresholds: float) -> bool:
        """Move sliders; a bad value leaves the state unchanged and sets `message` (never raises)."""
        for name, value in thresholds.items():
            problem = None
            if name not in self.graders:
                problem = f"Unknown grader {name!r}; graded columns: {self.graders}."
            elif value is None or not np.isfinite(float(value)):
                problem = f"Threshold for {name} is {value!r}: give a number."
            elif not self.ranges[name][0] - 1e-9 <= float(value) <= self.ranges[name][1] + 1e-9:
                low, high = self.ranges[name]
                problem = f"Threshold {value} for {name} is outside the scores' range [{low:.3g}, {high:.3g}]."
            if problem:
                return self._refuse(problem)
        self.policy = replace(self.policy, thresholds={**self.thresholds, **{k: float(v) for k, v in thresholds.items()}})
        self._recompute()
        return True

    def set_mode(self, mode: str | None = None, target_rate: float | None = None, dedup: str | None = "keep") -> bool:
        """Which rule follows the thresholds (EXPLORER_MODES), the target rate, and dedup ("keep": unchanged)."""
        if mode is not None and mode not in EXPLORER_MODES:
            return self._refuse(f"Unknown mode {mode!r}; use one of {EXPLORER_MODES}.")
        if dedup not in ("keep", None, "exact", "minhash", "embedding"):
            return self._refuse(f"Unknown dedup {dedup!r}.")
        if dedup == "embedding" and self.live.embeddings is None:
            return self._refuse("Embedding dedup needs embeddings: create the explorer with embeddings=...")
        mode = mode or self.mode
        self.target_rate = self.target_rate if target_rate is None else float(target_rate)
        self.policy = replace(self.policy, top1_of_k=mode == "top1_of_k",
                              target_rate=self.target_rate if mode == "target_rate" else None,
                              dedup=self.policy.dedup if dedup == "keep" else dedup)
        self._recompute()
        return True

    def label(self, sample_id: str, label: str | None, reviewer: str | None = None) -> None:
        """Mark a sample 'good' or 'bad' by hand (None clears it); stored in the run with time and reviewer."""
        self.label_many([sample_id], label, reviewer)

    def label_many(self, sample_ids, label: str | None, reviewer: str | None = None) -> bool:
        """One verdict for several samples (a lasso on the data map), stored as one part; 'exclude' keeps
        them out of the selection without calling them bad. No samples: nothing happens."""
        if label not in (*HUMAN_LABELS, None):
            return self._refuse(f"Label must be one of {HUMAN_LABELS} or None, not {label!r}.")
        sample_ids = [str(sample_id) for sample_id in sample_ids]
        if not sample_ids:
            return False
        if self.run is not None:
            self.run.add_labels(dict.fromkeys(sample_ids, label), reviewer or self.reviewer or "", self.generation)
            self.labels = self.run.labels(self.generation)
        else:
            for sample_id in sample_ids:
                if label is None:
                    self.labels.pop(sample_id, None)
                else:
                    self.labels[sample_id] = label
        self._recompute()
        return True

    def _refuse(self, problem: str) -> bool:
        self.message = problem
        self._show_message()
        return False

    def _recompute(self) -> None:
        try:
            self._selection = self.live.select(self.policy, labels=self.labels, source="ThresholdExplorer")
            self._current = self.live.update({}, mask=self._selection.mask)
            self.message = "" if self._selection.mask.any() else (
                "No sample passes these settings: lower a threshold or raise the target rate.")
        except Exception as exc:  # a callback must never raise into the kernel
            self.message = f"Could not update: {exc}"
            if self._selection is None:
                raise
        self._refresh()

    # ------------------------------------------------------------------ what it shows
    def rejected_by(self, index: int) -> str:
        """The first rule that rejected row `index` ('' if accepted; 'human:bad' for a human's verdict)."""
        return str(self._selection.rejected_by[index])

    def examples(self, k: int | None = None) -> pd.DataFrame:
        """Rows nearest the first threshold: the lowest-scored accepted and the highest-scored rejected."""
        k = k or self.n_examples
        mask = self.accepted_mask
        name = next(iter(self.thresholds), self.graders[0])
        scores = pd.Series(self._scores(name))
        accepted = scores[mask].sort_values().head(k // 2)
        rejected = scores[~mask].dropna().sort_values(ascending=False).head(k - len(accepted))
        rows = []
        for index in list(accepted.index) + list(rejected.index):
            row = self.samples.loc[index]
            rows.append({"index": int(index), "sample_id": row.get("sample_id"), "status":
                         "just accepted" if mask[index] else "just rejected",
                         "rejected_by": self.rejected_by(index), name: float(scores[index]),
                         "prompt": row.get("prompt", ""), "completion": row[self.text_column],
                         "human": self.labels.get(row.get("sample_id"), "")})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """The numbers the widget shows."""
        mask = self.accepted_mask
        out = {"n_samples": len(self.samples), "n_accepted": int(mask.sum()),
               "accept_rate": float(mask.mean()) if len(mask) else 0.0, "mode": self.mode,
               "policy": self.policy.to_dict(), "thresholds": dict(self.thresholds), "dedup": self.dedup,
               "target_rate": self.policy.target_rate,
               "diversity_accepted": {k: self._current[k] for k in DIVERSITY_KEYS},
               "diversity_all": {k: self._all[k] for k in DIVERSITY_KEYS},
               "n_human_labels": len(self.labels), "message": self.message}
        if self.verifier in self.graders:
            out["audit"] = self._audits()
        if self.probes:
            out["probes"] = {name: frame.to_dict(orient="records") for name, frame in self.probes.items()}
        if self.labels and "sample_id" in self.samples.columns:
            out["human_agreement"] = self._human_agreement()
        return out

    def _audits(self) -> dict:
        labels = self.samples[score_column(self.verifier)]
        audits = {}
        for name in self.graders:
            if name == self.verifier:
                continue
            key = (name, self.thresholds.get(name, 0.5))
            if key not in self._audit_cache:  # recomputed only for the grader whose threshold moved
                self._audit_cache[key] = {k: v for k, v in judge_audit(self.samples[score_column(name)], labels,
                                                                       threshold=key[1]).items() if k != "reliability"}
            audits[name] = self._audit_cache[key]
        return audits

    def _human_agreement(self) -> dict:
        human = self.samples["sample_id"].map(self.labels).map({"good": 1.0, "bad": 0.0})  # 'exclude' is no verdict
        both = human.notna()
        out = {}
        for name, threshold in self.thresholds.items():
            verdict = (self.samples[score_column(name)] >= threshold).astype(float)
            out[name] = {"n": int(both.sum()), "agreement": float((verdict[both] == human[both]).mean()),
                         "kappa": cohen_kappa(verdict[both], human[both])}
        return out

    # ------------------------------------------------------------------ the data map
    def map_layout(self, method: str = "auto", seed: int = 0, embedding: str = "auto"):
        """The samples' 2-D layout (datamap.MapLayout), computed once. embedding "auto": the explorer's own
        embeddings when it was made with them (MiniLM in the notebooks: already paid for), else the texts
        embedded by `datamap.embed_texts(..., "auto")`: MiniLM up to datamap.LEXICAL_ABOVE_ROWS texts, the
        fast lexical embedding above (MiniLM would take minutes). "minilm" / "lexical" force one."""
        if self._map is None or self._map.method != method and method != "auto":
            from .datamap import embed_texts, project

            embeddings, used = self.live.embeddings, ""
            if embeddings is None or embedding != "auto":
                embeddings, used = embed_texts(self.samples[self.text_column].astype(str).tolist(), embedding, seed)
            self._map = project(embeddings, method=method, seed=seed)
            self._map.embedding = used
        return self._map

    def map_colors(self, by: str | None = None):
        """(values, categories) the map is coloured by: a grader's scores, or codes of status / human label /
        task / generation (`datamap.color_values`)."""
        from .datamap import color_values

        return color_values(self.samples, by or self.map_color_by, self.accepted_mask, self.labels)

    def set_map_color(self, by: str) -> bool:
        try:
            self.map_colors(by)
        except InputDataError as exc:
            return self._refuse(str(exc))
        self.map_color_by = by
        self._refresh()
        return True

    def select_on_map(self, indices) -> bool:
        """Rows picked with the box or lasso tool. Zero points: nothing happens (the previous pick stays)."""
        indices = np.unique(np.asarray(list(indices), dtype=int))
        if len(indices) == 0:
            return False
        if indices.min() < 0 or indices.max() >= len(self.samples):
            return self._refuse(f"Map selection has rows outside 0..{len(self.samples) - 1}.")
        self.map_selected = indices
        self._refresh()
        return True

    def map_selection(self) -> pd.DataFrame:
        """The rows picked on the map, with their status and human label."""
        rows = self.samples.iloc[self.map_selected]
        return rows.assign(status=np.where(self.accepted_mask[self.map_selected], "accepted", "rejected"),
                           human=[self.labels.get(s, "") for s in rows["sample_id"]] if "sample_id" in rows else "")

    def label_map_selection(self, label: str | None) -> bool:
        """Label every picked row good / bad / exclude (None clears); stored like any other label."""
        if "sample_id" not in self.samples.columns:
            return self._refuse("Labels need a sample_id column.")
        return self.label_many(self.samples["sample_id"].to_numpy()[self.map_selected], label)

    # ------------------------------------------------------------------ saving
    def selection(self) -> Selection:
        """The current selection, with the policy and labels that reproduce it."""
        return self._selection

    def save_selection(self, name: str | None = None) -> str:
        """Save to gen-XXX/selections/<name>.parquet (default: the task's name, e.g. 'instructions')."""
        if self.run is None:
            self.message = "No run to save into: create the explorer with run=Run(...)."
        else:
            name = self._selection.save(self.run, self.generation, name)
            path = self.run.selection_path(self.generation, name).relative_to(self.run.path)
            self.message = f"Saved {self._selection.n_accepted} accepted samples to {path}."
        self._show_message()
        return self.message

    # ------------------------------------------------------------------ view hooks (no view here)
    def _refresh(self) -> None:
        """Called after every change; the widget view redraws here."""

    def _show_message(self) -> None:
        """Called when `message` changes without a recompute."""
