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

from .datamap import LEXICAL_ABOVE_ROWS
from .explorer import EXPLORER_MODES, ExplorerState
from .select import score_column


MAP_AT_ONCE_MAX_ROWS = 20_000  # larger tables draw the data map when its tab's button is pressed
SAVED_STATE_MAX_ROWS = 5_000  # up to this many rows every change also refreshes the figures' saved state


def save_figure_state(figure) -> None:
    """Put a FigureWidget as it is now into its saved widget state.

    Changes after a FigureWidget is made (update_layout, batch_update of its data) reach the browser as
    one-off messages and leave its synced `_widget_data`/`_widget_layout` as they were at creation, so a
    notebook saved with its widget state (papermill, `workbench report`) would show the figure as first
    drawn. plotly copies `_data` the same way when a figure is displayed by itself; its front-end ignores
    the change, so the live plot is untouched. Costs a copy of the figure's data over the comm."""
    from copy import deepcopy

    figure._widget_data = deepcopy(figure._data)
    figure._widget_layout = deepcopy(figure._layout_obj._props)


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
        for figure in figures:  # a fixed width that fits the grid cell: autosize drew them wider and cut them
            figure.layout.width = viz.EXPLORER_FIGURE_WIDTH
        thresholds_tab = w.VBox([
            w.HBox([w.VBox(list(sliders.values())), w.VBox([mode, rate, dedup])]),
            w.HBox([ui["diversity"], ui["audit"]]),
            # as many 480 px columns as fit: two on a wide notebook, one on a narrow one (never cut off)
            w.GridBox(figures, layout=w.Layout(grid_template_columns=f"repeat(auto-fill, {viz.EXPLORER_FIGURE_WIDTH + 20}px)",
                                               width="100%")),
            w.HTML("<b>Examples near the threshold</b> (mark good/bad to override the graders)"),
            ui["examples"], w.HBox([reviewer, save]),
        ])
        ui["map_box"] = w.VBox([w.HTML("The data map lays every sample out in 2-D by meaning (MiniLM + UMAP; "
                                       f"without embeddings given, more than {LEXICAL_ABOVE_ROWS:,} samples by "
                                       "their character n-grams, in seconds)."),
                                w.Button(description="draw the data map", icon="map")])
        ui["map_box"].children[1].on_click(lambda _: self._build_map())
        ui["tabs"] = w.Tab([thresholds_tab, ui["map_box"]])
        ui["tabs"].set_title(0, "thresholds")
        ui["tabs"].set_title(1, "data map")
        ui["box"] = w.VBox([
            w.HTML("<b>Threshold explorer</b>: move a slider; accepted samples are green."),
            ui["count"], ui["message"], ui["tabs"],
        ])
        self._ui = ui
        # embeddings at hand: the map costs only its projection (UMAP: ~8 s at 10k rows; minutes at 100k,
        # where the tab's button draws it on request)
        if self.live.embeddings is not None and len(self.samples) <= MAP_AT_ONCE_MAX_ROWS:
            self._build_map()
        self._refresh()

    def _build_map(self) -> None:
        """The data-map tab: one lasso-able scatter of every sample, a colour menu, the picked rows and
        buttons that label them (good / bad / exclude from the selection / clear)."""
        import ipywidgets as w
        import plotly.graph_objects as go

        from . import viz
        from .datamap import color_options

        if "map" in self._ui:
            return
        layout = self.map_layout()
        values, categories = self.map_colors()
        how = f"{layout.embedding} + {layout.method.upper()}" if layout.embedding else layout.method.upper()
        figure = go.FigureWidget(viz.data_map_live(layout.coords, values, categories, self.samples[self.text_column],
                                                   title=f"{len(self.samples)} samples ({how})"))
        figure.data[0].on_selection(lambda trace, points, selector: self.select_on_map(points.point_inds))
        color = w.Dropdown(options=color_options(self.samples), value=self.map_color_by, description="colour by")
        color.observe(lambda change: self.set_map_color(change["new"]), names="value")
        buttons = []
        for text, label, style in (("good", "good", "success"), ("bad", "bad", "danger"),
                                   ("exclude", "exclude", "warning"), ("clear label", None, "")):
            button = w.Button(description=text, button_style=style, layout=w.Layout(width="100px"))
            button.on_click(lambda _, value=label: self.label_map_selection(value))
            buttons.append(button)
        picked = w.HTML()
        note = f"<small>{layout.note}</small>" if layout.note else ""
        self._ui.update(map=figure, map_color=color, map_picked=picked)
        self._ui["map_box"].children = [
            w.HTML("Drag a lasso or box over points to pick them; label the picked samples in one click. "
                   f"'exclude' keeps them out of the selection without calling them bad.{note}"),
            w.HBox([color] + buttons), figure, picked]
        self._refresh_map()

    def _refresh_map(self) -> None:
        if self._ui is None or "map" not in self._ui:
            return
        from . import viz

        values, categories = self.map_colors()
        with self._ui["map"].batch_update():
            self._ui["map"].data[0].marker.update(viz.map_colors(values, categories))
        picked = self.map_selection().head(8)
        rows = "".join(f"<tr><td>{html.escape(str(r.status))}</td><td>{html.escape(str(r.human))}</td>"
                       f"<td>{html.escape(str(getattr(r, self.text_column)))[:200]}</td></tr>"
                       for r in picked.itertuples())
        self._ui["map_picked"].value = (f"<b class='wb-map-picked-count'>{len(self.map_selected)} picked</b>" + (
            f"<table class='wb-map-picked'><tr><th>status</th><th>human</th><th>text</th></tr>{rows}</table>"
            if rows else " (drag a lasso over the map)"))

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
        self._refresh_map()
        if len(self.samples) <= SAVED_STATE_MAX_ROWS:
            self.save_figures()

    def save_figures(self) -> None:
        """The explorer's figures as they are now into the notebook's saved widget state, so a report shows
        the last thresholds' histograms, not the first ones (automatic up to SAVED_STATE_MAX_ROWS rows; call it
        before saving a notebook over a larger table)."""
        if self._ui is None:
            return
        figures = list(self._ui["histograms"].values()) + [self._ui.get("scatter"), self._ui.get("map")]
        for figure in figures:
            if figure is not None:
                save_figure_state(figure)

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
