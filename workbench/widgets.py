"""ipywidgets apps over `viz` and `select`: the threshold explorer.

    explorer = ThresholdExplorer(graded, run=run)   # graded: samples with score__<grader> columns
    explorer.widget                                  # sliders, live histograms, diversity, audit, examples
    explorer.set_thresholds(judge=0.7); explorer.summary(); explorer.accepted

The programmatic API and the widget drive the same state, so tests move sliders by setting values.
Callbacks never raise: a bad value (NaN, out of range) or an empty selection shows a message instead.
Human labels (good/bad per sample, with reviewer and time) are stored in the run, override the graders'
verdict for that row, and are audited against each grader (agreement, Cohen's kappa).
"""
from __future__ import annotations

import html
import time
from typing import Any

import numpy as np
import pandas as pd

from .errors import InputDataError
from .live import LiveSelection
from .metrics.audit import cohen_kappa, judge_audit
from .select import SCORE_PREFIX, Selection, accept

POLICIES = ("thresholds", "target_rate", "top1_of_k")


def graded_table(run, generation: int = 0) -> pd.DataFrame:
    """The generation's samples with every stored grader's scores as score__<name> columns."""
    samples = run.read("samples", generation)
    scores_dir = run.path / f"gen-{generation:03d}" / "scores"
    for folder in sorted(scores_dir.glob("*")) if scores_dir.exists() else []:
        scores = run.read(f"scores/{folder.name}", generation)
        if len(scores):
            samples[f"{SCORE_PREFIX}{folder.name}"] = samples["sample_id"].map(dict(zip(scores["sample_id"], scores["score"])))
    return samples


class ThresholdExplorer:
    """Interactive acceptance: parameters are stored as given; the selection state lives in attributes."""

    def __init__(self, samples: pd.DataFrame | None = None, run=None, generation: int = 0, embeddings=None,
                 verifier: str = "verifier", text_column: str = "completion", reviewer: str | None = None,
                 examples: int = 6):
        if samples is None:
            if run is None:
                raise InputDataError("ThresholdExplorer needs samples or a run.", "Pass samples=graded or run=Run(...).")
            samples = graded_table(run, generation)
        self.samples = samples.reset_index(drop=True)
        self.graders = [c[len(SCORE_PREFIX):] for c in self.samples.columns if c.startswith(SCORE_PREFIX)]
        if not self.graders:
            raise InputDataError("The samples have no score__<grader> columns.", "Grade them first (workbench.grade).")
        self.run, self.generation, self.verifier, self.text_column = run, generation, verifier, text_column
        self.reviewer, self.n_examples = reviewer, examples
        self.ranges = {}
        for name in self.graders:
            values = pd.to_numeric(self.samples[SCORE_PREFIX + name], errors="coerce").to_numpy(dtype=float)
            finite = values[np.isfinite(values)]
            self.ranges[name] = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
        self.thresholds = {name: self.ranges[name][0] for name in self.graders if name != verifier}
        self.policy, self.target_rate, self.dedup = "thresholds", 0.5, None
        self.message = ""
        self.labels = self._load_labels()
        self._live = LiveSelection(self.samples, embeddings=embeddings, text_column=text_column)
        self._all = self._live.update({}, mask=np.ones(len(self.samples), dtype=bool))
        self._ui: dict[str, Any] | None = None
        self.accepted = np.ones(len(self.samples), dtype=bool)
        self._reasons, self._current = None, self._all
        self._audit_cache: dict = {}  # (grader, threshold) -> audit; the AUC does not move with the slider
        self._recompute()

    # ------------------------------------------------------------------ state
    def _load_labels(self) -> dict[str, str]:
        if self.run is None:
            return {}
        stored = self.run.read("labels", self.generation)
        return dict(zip(stored["sample_id"], stored["label"])) if len(stored) else {}

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
                self.message = problem
                self._show_message()
                return False
        self.thresholds.update({k: float(v) for k, v in thresholds.items()})
        self._recompute()
        return True

    def set_policy(self, policy: str = None, target_rate: float | None = None, dedup: str | None = "keep") -> bool:
        if policy is not None and policy not in POLICIES:
            self.message = f"Unknown policy {policy!r}; use one of {POLICIES}."
            self._show_message()
            return False
        self.policy = policy or self.policy
        self.target_rate = self.target_rate if target_rate is None else float(target_rate)
        self.dedup = self.dedup if dedup == "keep" else dedup
        self._recompute()
        return True

    def _recompute(self) -> None:
        try:
            if self.policy == "thresholds" and not self.dedup:
                mask = self._live.mask_for(self.thresholds)
                reasons = None
            else:
                embeddings = self._live._embeddings if self.dedup == "embedding" else None
                selection = accept(self.samples, thresholds=self.thresholds,
                                   target_rate=self.target_rate if self.policy == "target_rate" else None,
                                   top1_of_k=self.policy == "top1_of_k", dedup=self.dedup, embeddings=embeddings,
                                   text_column=self.text_column)
                mask, reasons = selection.mask, selection.rejected_by
            mask = mask.copy()
            ids = self.samples["sample_id"].to_numpy() if "sample_id" in self.samples.columns else None
            if self.labels and ids is not None:  # human verdicts override the graders
                labelled = pd.Series(ids).map(self.labels).to_numpy()
                mask[labelled == "good"] = True
                mask[labelled == "bad"] = False
            self.accepted = mask
            self._reasons = reasons
            self._current = self._live.update({}, mask=mask)
            self.message = "" if mask.any() else ("No sample passes these settings: lower a threshold or raise "
                                                  "the target rate.")
        except Exception as exc:  # a callback must never raise into the kernel
            self.message = f"Could not update: {exc}"
        self._refresh()

    def rejected_by(self, index: int) -> str:
        """The first rule that rejected row `index` ('' if accepted)."""
        if self.accepted[index]:
            return ""
        sample_id = self.samples.get("sample_id", pd.Series([None] * len(self.samples)))[index]
        if self.labels.get(sample_id) == "bad":
            return "human:bad"
        if self._reasons is not None:
            return str(self._reasons[index])
        for name, value in self.thresholds.items():
            score = self.samples[SCORE_PREFIX + name][index]
            if not np.isfinite(score):
                return f"nan:{name}"
            if score < value:
                return f"threshold:{name}"
        return "?"

    def examples(self, k: int | None = None) -> pd.DataFrame:
        """Rows nearest the first threshold: the lowest-scored accepted and the highest-scored rejected."""
        k = k or self.n_examples
        name = next(iter(self.thresholds), self.graders[0])
        scores = pd.to_numeric(self.samples[SCORE_PREFIX + name], errors="coerce")
        accepted = scores[self.accepted].sort_values().head(k // 2)
        rejected = scores[~self.accepted].dropna().sort_values(ascending=False).head(k - len(accepted))
        rows = []
        for index in list(accepted.index) + list(rejected.index):
            row = self.samples.loc[index]
            rows.append({"index": int(index), "sample_id": row.get("sample_id"), "status":
                         "just accepted" if self.accepted[index] else "just rejected",
                         "rejected_by": self.rejected_by(index), name: float(scores[index]),
                         "prompt": row.get("prompt", ""), "completion": row[self.text_column],
                         "human": self.labels.get(row.get("sample_id"), "")})
        return pd.DataFrame(rows)

    def summary(self) -> dict:
        """The numbers the widget shows."""
        current, whole = self._current, self._all
        keys = ("distinct_1", "distinct_2", "distinct_3", "compression_ratio", "vendi_embedding")
        out = {"n_samples": len(self.samples), "n_accepted": int(self.accepted.sum()),
               "accept_rate": float(self.accepted.mean()) if len(self.accepted) else 0.0,
               "policy": self.policy, "thresholds": dict(self.thresholds), "dedup": self.dedup,
               "target_rate": self.target_rate if self.policy == "target_rate" else None,
               "diversity_accepted": {k: current[k] for k in keys}, "diversity_all": {k: whole[k] for k in keys},
               "n_human_labels": len(self.labels), "message": self.message}
        if self.verifier in self.graders:
            labels = self.samples[SCORE_PREFIX + self.verifier]
            cache = self._audit_cache
            out["audit"] = {}
            for name in self.graders:
                if name == self.verifier:
                    continue
                key = (name, self.thresholds.get(name, 0.5))
                if key not in cache:  # recomputed only for the grader whose threshold moved
                    cache[key] = {k: v for k, v in judge_audit(self.samples[SCORE_PREFIX + name], labels,
                                                               threshold=key[1]).items() if k != "reliability"}
                out["audit"][name] = cache[key]
        if self.labels and "sample_id" in self.samples.columns:
            human = self.samples["sample_id"].map({k: 1.0 if v == "good" else 0.0 for k, v in self.labels.items()})
            out["human_agreement"] = {}
            for name in self.thresholds:
                verdict = (self.samples[SCORE_PREFIX + name] >= self.thresholds[name]).astype(float)
                both = human.notna()
                out["human_agreement"][name] = {
                    "n": int(both.sum()), "agreement": float((verdict[both] == human[both]).mean()),
                    "kappa": cohen_kappa(verdict[both], human[both])}
        return out

    # ------------------------------------------------------------------ human oversight and saving
    def label(self, sample_id: str, label: str | None, reviewer: str | None = None) -> None:
        """Mark a sample 'good' or 'bad' by hand (None clears it); stored in the run with time and reviewer."""
        if label not in ("good", "bad", None):
            self.message = f"Label must be 'good', 'bad' or None, not {label!r}."
            self._show_message()
            return
        if label is None:
            self.labels.pop(sample_id, None)
        else:
            self.labels[sample_id] = label
        if self.run is not None:
            self.run.append("labels", pd.DataFrame([{
                "sample_id": sample_id, "label": label or "", "reviewer": reviewer or self.reviewer or "",
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}]), self.generation)
            self.labels = {k: v for k, v in self._load_labels().items() if v}
        self._recompute()

    def selection(self) -> Selection:
        reasons = np.array([self.rejected_by(i) for i in range(len(self.samples))], dtype=object)
        return Selection(mask=self.accepted.copy(), rejected_by=reasons.astype(str),
                         sample_ids=self.samples["sample_id"].to_numpy(),
                         params={"policy": self.policy, "thresholds": dict(self.thresholds), "dedup": self.dedup,
                                 "target_rate": self.target_rate if self.policy == "target_rate" else None,
                                 "human_labels": dict(self.labels), "source": "ThresholdExplorer"})

    def save_selection(self) -> str:
        if self.run is None:
            self.message = "No run to save into: create the explorer with run=Run(...)."
        else:
            self.selection().save(self.run, self.generation)
            self.message = f"Saved {int(self.accepted.sum())} accepted samples to gen-{self.generation:03d}/selection.parquet."
        self._show_message()
        return self.message

    # ------------------------------------------------------------------ the widget
    @property
    def widget(self):
        if self._ui is None:
            self._build()
        return self._ui["box"]

    def _build(self) -> None:
        import ipywidgets as w
        import plotly.graph_objects as go

        from . import viz

        ui: dict[str, Any] = {}
        sliders = {}
        for name in self.thresholds:
            low, high = self.ranges[name]
            slider = w.FloatSlider(value=self.thresholds[name], min=low, max=high, step=max((high - low) / 200, 1e-6),
                                   description=name, continuous_update=True, readout_format=".3f",
                                   layout=w.Layout(width="420px"))
            slider.observe(lambda change, n=name: self.set_thresholds(**{n: change["new"]}), names="value")
            sliders[name] = slider
        policy = w.Dropdown(options=POLICIES, value=self.policy, description="policy")
        policy.observe(lambda change: self.set_policy(policy=change["new"]), names="value")
        rate = w.FloatSlider(value=self.target_rate, min=0.0, max=1.0, step=0.01, description="target rate")
        rate.observe(lambda change: self.set_policy(target_rate=change["new"]), names="value")
        # "none" as a string: a None value means "nothing selected" to ipywidgets and shows a blank box
        dedup = w.Dropdown(options=[("none", "none"), ("exact", "exact"), ("MinHash", "minhash")],
                           value=self.dedup or "none", description="dedup")
        dedup.observe(lambda change: self.set_policy(dedup=None if change["new"] == "none" else change["new"]),
                      names="value")
        ui["count"] = w.HTML()
        ui["message"] = w.HTML()
        ui["diversity"] = w.HTML()
        ui["audit"] = w.HTML()
        ui["histograms"] = {}
        for name in self.thresholds:
            figure = go.FigureWidget(viz.score_histogram(self.samples[SCORE_PREFIX + name], self.accepted,
                                                         self.thresholds[name], name))
            ui["histograms"][name] = figure
        ui["scatter"] = None
        if len(self.graders) >= 2:
            x, y = self.graders[0], self.graders[1]
            ui["scatter"] = go.FigureWidget(viz.score_scatter(self.samples, x, y, self.accepted))
            ui["scatter_axes"] = (x, y)
        ui["examples"] = w.VBox()
        reviewer = w.Text(value=self.reviewer or "", description="reviewer", placeholder="your name (optional)")
        reviewer.observe(lambda change: setattr(self, "reviewer", change["new"] or None), names="value")
        save = w.Button(description="save selection", button_style="success", icon="save")
        save.on_click(lambda _: self.save_selection())
        ui.update(sliders=sliders, policy=policy, rate=rate, dedup=dedup, save=save, reviewer=reviewer)
        figures = list(ui["histograms"].values()) + ([ui["scatter"]] if ui["scatter"] is not None else [])
        ui["box"] = w.VBox([
            w.HTML("<b>Threshold explorer</b>: move a slider; accepted samples are green."),
            w.HBox([w.VBox(list(sliders.values())), w.VBox([policy, rate, dedup])]),
            ui["count"], ui["message"],
            w.HBox([ui["diversity"], ui["audit"]]),
            w.GridBox(figures, layout=w.Layout(grid_template_columns="repeat(2, 480px)")),
            w.HTML("<b>Examples near the threshold</b> (mark good/bad to override the graders)"),
            ui["examples"], w.HBox([reviewer, save]),
        ])
        self._ui = ui
        self._refresh()

    def _show_message(self) -> None:
        if self._ui is not None:
            color = "#b00020" if self.message and not self.message.startswith("Saved") else "#2a9d8f"
            self._ui["message"].value = f"<span style='color:{color}'>{html.escape(self.message)}</span>"

    def _refresh(self) -> None:
        if self._ui is None:
            return
        ui, summary = self._ui, self.summary()
        ui["count"].value = (f"<span class='wb-accepted-count'><b>{summary['n_accepted']}</b> of "
                             f"{summary['n_samples']} accepted ({100 * summary['accept_rate']:.1f}%)</span>")
        self._show_message()
        rows = "".join(f"<tr><td>{k}</td><td>{summary['diversity_all'][k]:.3f}</td>"
                       f"<td>{summary['diversity_accepted'][k]:.3f}</td></tr>" for k in summary["diversity_all"])
        ui["diversity"].value = f"<table><tr><th>diversity</th><th>all</th><th>accepted</th></tr>{rows}</table>"
        if "audit" in summary:
            rows = "".join(f"<tr><td>{n}</td><td>{a['roc_auc']:.3f}</td><td>{a['accuracy_at_threshold']:.3f}</td></tr>"
                           for n, a in summary["audit"].items())
            ui["audit"].value = (f"<table><tr><th>vs {self.verifier}</th><th>ROC AUC</th><th>accuracy</th></tr>"
                                 f"{rows}</table>")
        for name, figure in ui["histograms"].items():
            scores = pd.to_numeric(self.samples[SCORE_PREFIX + name], errors="coerce").to_numpy(dtype=float)
            finite = np.isfinite(scores)
            with figure.batch_update():
                figure.data[0].x = scores[finite & self.accepted]
                figure.data[1].x = scores[finite & ~self.accepted]
                figure.layout.shapes[0].x0 = figure.layout.shapes[0].x1 = self.thresholds[name]
                figure.layout.title.text = (f"{name}: {int((finite & self.accepted).sum())} accepted of "
                                            f"{int(finite.sum())} scored")
        if ui["scatter"] is not None:
            x, y = ui["scatter_axes"]
            with ui["scatter"].batch_update():
                for trace, part in zip(ui["scatter"].data, (self.accepted, ~self.accepted)):
                    trace.x = self.samples.loc[part, SCORE_PREFIX + x].to_numpy()
                    trace.y = self.samples.loc[part, SCORE_PREFIX + y].to_numpy()
        self._refresh_examples()

    def _refresh_examples(self) -> None:
        import ipywidgets as w

        # the rows' widgets are made once and only updated: creating widgets on every slider move
        # costs ~40 ms at 6 rows
        rows = self._ui.setdefault("example_rows", [])
        examples = self.examples()
        while len(rows) < len(examples):
            good = w.Button(description="good", layout=w.Layout(width="60px"))
            bad = w.Button(description="bad", layout=w.Layout(width="60px"))
            text = w.HTML(layout=w.Layout(width="800px"))
            row = w.HBox([good, bad, text])
            row.sample_id = None
            good.on_click(lambda _, r=row: self.label(r.sample_id, "good"))
            bad.on_click(lambda _, r=row: self.label(r.sample_id, "bad"))
            rows.append(row)
        for row, example in zip(rows, examples.itertuples()):
            good, bad, text = row.children
            row.sample_id = example.sample_id
            status = f"{example.status}" + (f" ({example.rejected_by})" if example.rejected_by else "")
            text.value = f"<small><b>{status}</b></small> {html.escape(str(example.completion))[:400]}"
            good.button_style = "success" if example.human == "good" else ""
            bad.button_style = "danger" if example.human == "bad" else ""
        self._ui["examples"].children = rows[: len(examples)]
