"""ipywidgets apps over `viz` and the explorer's state: the threshold explorer.

    explorer = ThresholdExplorer(run=run)           # or ThresholdExplorer(graded): score__<grader> columns
    explorer.widget                                  # sliders, live histograms, diversity, audit, examples
    explorer.set_thresholds(judge=0.7); explorer.summary(); explorer.accepted_mask

The state (policy, labels, accepted mask, summary) is `explorer.ExplorerState`, plain Python; this module
only draws it. The programmatic API and the widget drive the same state, so tests move sliders by setting
values. Human labels (good/bad per sample, with reviewer and time) are stored in the run, override the
graders' verdict for that row, and are audited against each grader (agreement, Cohen's kappa).
"""
from __future__ import annotations

import html
from typing import Any

import numpy as np

from .explorer import EXPLORER_MODES, ExplorerState
from .select import score_column


class ThresholdExplorer(ExplorerState):
    """The explorer's state with an ipywidgets view (`widget`), built on first access."""

    _ui: dict[str, Any] | None = None

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
        mode = w.Dropdown(options=EXPLORER_MODES, value=self.mode, description="policy")
        mode.observe(lambda change: self.set_mode(mode=change["new"]), names="value")
        rate = w.FloatSlider(value=self.target_rate, min=0.0, max=1.0, step=0.01, description="target rate")
        rate.observe(lambda change: self.set_mode(target_rate=change["new"]), names="value")
        # "none" as a string: a None value means "nothing selected" to ipywidgets and shows a blank box
        dedup = w.Dropdown(options=[("none", "none"), ("exact", "exact"), ("MinHash", "minhash")],
                           value=self.dedup or "none", description="dedup")
        dedup.observe(lambda change: self.set_mode(dedup=None if change["new"] == "none" else change["new"]),
                      names="value")
        ui["count"] = w.HTML()
        ui["message"] = w.HTML()
        ui["diversity"] = w.HTML()
        ui["audit"] = w.HTML()
        ui["histograms"] = {}
        for name in self.thresholds:
            figure = go.FigureWidget(viz.score_histogram(self.samples[score_column(name)], self.accepted_mask,
                                                         self.thresholds[name], name))
            ui["histograms"][name] = figure
        ui["scatter"] = None
        if len(self.graders) >= 2:
            x, y = self.graders[0], self.graders[1]
            ui["scatter"] = go.FigureWidget(viz.score_scatter(self.samples, x, y, self.accepted_mask))
            ui["scatter_axes"] = (x, y)
        ui["examples"] = w.VBox()
        reviewer = w.Text(value=self.reviewer or "", description="reviewer", placeholder="your name (optional)")
        reviewer.observe(lambda change: setattr(self, "reviewer", change["new"] or None), names="value")
        save = w.Button(description="save selection", button_style="success", icon="save")
        save.on_click(lambda _: self.save_selection())
        ui.update(sliders=sliders, mode=mode, rate=rate, dedup=dedup, save=save, reviewer=reviewer)
        figures = list(ui["histograms"].values()) + ([ui["scatter"]] if ui["scatter"] is not None else [])
        ui["box"] = w.VBox([
            w.HTML("<b>Threshold explorer</b>: move a slider; accepted samples are green."),
            w.HBox([w.VBox(list(sliders.values())), w.VBox([mode, rate, dedup])]),
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
        audit = ""
        if "audit" in summary:
            rows = "".join(f"<tr><td>{n}</td><td>{a['roc_auc']:.3f}</td><td>{a['accuracy_at_threshold']:.3f}</td></tr>"
                           for n, a in summary["audit"].items())
            audit = f"<table><tr><th>vs {self.verifier}</th><th>ROC AUC</th><th>accuracy</th></tr>{rows}</table>"
        ui["audit"].value = audit + self._probes_html()
        accepted = self.accepted_mask
        for name, figure in ui["histograms"].items():
            scores = self._scores(name)
            finite = np.isfinite(scores)
            with figure.batch_update():
                figure.data[0].x = scores[finite & accepted]
                figure.data[1].x = scores[finite & ~accepted]
                figure.layout.shapes[0].x0 = figure.layout.shapes[0].x1 = self.thresholds[name]
                figure.layout.title.text = (f"{name}: {int((finite & accepted).sum())} accepted of "
                                            f"{int(finite.sum())} scored")
        if ui["scatter"] is not None:
            x, y = ui["scatter_axes"]
            with ui["scatter"].batch_update():
                for trace, part in zip(ui["scatter"].data, (accepted, ~accepted)):
                    trace.x = self.samples.loc[part, score_column(x)].to_numpy()
                    trace.y = self.samples.loc[part, score_column(y)].to_numpy()
        self._refresh_examples()

    def _probes_html(self) -> str:
        """The stored judge-bias probes (estimate and 95% CI per probe), under the audit table."""
        rows = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(p['probe']))}</td><td>{p['estimate']:.3f}</td>"
            f"<td>[{p['ci_low']:.3f}, {p['ci_high']:.3f}]</td><td>{int(p['n'])}</td></tr>"
            for name, frame in self.probes.items() for p in frame.to_dict(orient="records"))
        return ("<table class='wb-probes'><tr><th>judge</th><th>bias probe</th><th>estimate</th><th>95% CI</th>"
                f"<th>n</th></tr>{rows}</table>") if rows else ""

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
