"""Pure figure builders: DataFrame (or numbers) in, `plotly.graph_objects.Figure` out.

Widgets wrap these in FigureWidgets and update their data in place; notebooks and reports show them
as they are. Nothing here reads files or holds state.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .store import score_column

ACCEPTED, REJECTED, THRESHOLD = "#2a9d8f", "#e76f51", "#264653"
EXPLORER_FIGURE_WIDTH = 460  # px: the explorer's histograms and scatter, one grid cell each


def _go():
    import plotly.graph_objects as go

    return go


def _xbins(low: float, high: float, bins: int) -> dict:
    """Histogram bins from low to high. The end lies half a bin past the maximum: plotly leaves a value
    sitting exactly on `end` out of the bars (the browser test caught the top score missing)."""
    size = max((high - low) / bins, 1e-9)
    return dict(start=low, end=high + size / 2, size=size)


def score_histogram(scores, accepted, threshold: float | None = None, name: str = "score", bins: int = 30):
    """Histogram of one grader's scores, accepted and rejected rows stacked in two colours, threshold drawn."""
    go = _go()
    scores = np.asarray(scores, dtype=float)
    accepted = np.asarray(accepted, dtype=bool)
    finite = np.isfinite(scores)
    low, high = (float(scores[finite].min()), float(scores[finite].max())) if finite.any() else (0.0, 1.0)
    xbins = _xbins(low, high, bins)
    figure = go.Figure([
        go.Histogram(x=scores[finite & accepted], name="accepted", marker_color=ACCEPTED, xbins=xbins),
        go.Histogram(x=scores[finite & ~accepted], name="rejected", marker_color=REJECTED, xbins=xbins),
    ])
    figure.update_layout(barmode="stack", title=f"{name}: {int((finite & accepted).sum())} accepted of "
                         f"{int(finite.sum())} scored", xaxis_title=name, yaxis_title="samples",
                         height=280, margin=dict(l=40, r=10, t=40, b=40), legend=dict(orientation="h", y=-0.3))
    if threshold is not None and np.isfinite(threshold):
        figure.add_vline(x=threshold, line_color=THRESHOLD, line_dash="dash")
    return figure


def score_scatter(frame: pd.DataFrame, x: str, y: str, accepted) -> "object":
    """Two graders against each other, accepted rows in one colour, rejected in the other."""
    go = _go()
    accepted = np.asarray(accepted, dtype=bool)
    x_scores, y_scores = frame[score_column(x)], frame[score_column(y)]
    figure = go.Figure([
        go.Scattergl(x=x_scores[accepted], y=y_scores[accepted], mode="markers",
                     name="accepted", marker=dict(color=ACCEPTED, size=5, opacity=0.6)),
        go.Scattergl(x=x_scores[~accepted], y=y_scores[~accepted], mode="markers",
                     name="rejected", marker=dict(color=REJECTED, size=5, opacity=0.6)),
    ])
    figure.update_layout(title=f"{x} vs {y}", xaxis_title=x, yaxis_title=y, height=320,
                         margin=dict(l=40, r=10, t=40, b=40))
    return figure


def diversity_bars(all_report: dict, accepted_report: dict, keys=("distinct_1", "distinct_2", "distinct_3",
                                                                   "compression_ratio", "vendi_embedding")):
    """The accepted set's diversity next to the whole set's, one group of bars per metric."""
    go = _go()
    keys = [k for k in keys if k in all_report and np.isfinite(all_report[k])]
    figure = go.Figure([
        go.Bar(x=keys, y=[all_report[k] for k in keys], name="all", marker_color="#8d99ae"),
        go.Bar(x=keys, y=[accepted_report.get(k, np.nan) for k in keys], name="accepted", marker_color=ACCEPTED),
    ])
    figure.update_layout(barmode="group", title="diversity: all vs accepted", height=300,
                         margin=dict(l=40, r=10, t=40, b=40))
    return figure


def reliability_diagram(table: pd.DataFrame, name: str = "judge"):
    """Mean score vs fraction actually correct per score bin; the diagonal is perfect calibration."""
    go = _go()
    filled = table[table["count"] > 0]
    figure = go.Figure([
        go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="calibrated", line=dict(dash="dot", color="#8d99ae")),
        go.Scatter(x=filled["mean_score"], y=filled["positive_rate"], mode="markers+lines", name=name,
                   marker=dict(size=np.clip(np.sqrt(filled["count"]) * 3, 5, 30), color=THRESHOLD),
                   text=[f"n={c}" for c in filled["count"]]),
    ])
    figure.update_layout(title=f"{name} calibration (ECE {table.attrs.get('ece', float('nan')):.3f})",
                         xaxis_title="mean score in bin", yaxis_title="fraction correct", height=320,
                         margin=dict(l=40, r=10, t=40, b=40))
    return figure


def threshold_slider_figure(scores, name: str = "score", steps: int = 21, bins: int = 30):
    """A static figure with plotly's own slider: one precomputed step per threshold, each showing the
    accepted/rejected histogram and the accept count, so a reader of a static HTML report can move it."""
    go = _go()
    scores = np.asarray(scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    low, high = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    thresholds = np.linspace(low, high, steps)
    xbins = _xbins(low, high, bins)
    figure = go.Figure()
    for index, threshold in enumerate(thresholds):
        accepted = finite >= threshold
        visible = index == steps // 2
        figure.add_trace(go.Histogram(x=finite[accepted], xbins=xbins, marker_color=ACCEPTED, name="accepted",
                                      visible=visible, showlegend=index == 0))
        figure.add_trace(go.Histogram(x=finite[~accepted], xbins=xbins, marker_color=REJECTED, name="rejected",
                                      visible=visible, showlegend=index == 0))
    slider_steps = []
    for index, threshold in enumerate(thresholds):
        count = int((finite >= threshold).sum())
        visible = [False] * (2 * steps)
        visible[2 * index] = visible[2 * index + 1] = True
        slider_steps.append(dict(method="update", label=f"{threshold:.2f}", args=[
            {"visible": visible},
            {"title": f"{name} >= {threshold:.2f}: {count} of {len(finite)} accepted ({100 * count / max(len(finite), 1):.0f}%)"}]))
    middle = thresholds[steps // 2]
    count = int((finite >= middle).sum())
    figure.update_layout(barmode="stack", sliders=[dict(active=steps // 2, steps=slider_steps,
                                                        currentvalue=dict(prefix=f"{name} threshold: "))],
                         title=f"{name} >= {middle:.2f}: {count} of {len(finite)} accepted "
                               f"({100 * count / max(len(finite), 1):.0f}%)", height=380,
                         xaxis_title=name, yaxis_title="samples")
    return figure


def generation_violins(frame: pd.DataFrame, column: str):
    """Score distributions per generation as violins (for the self-learning loop)."""
    go = _go()
    figure = go.Figure([go.Violin(x=[g] * int((frame["generation"] == g).sum()),
                                  y=frame.loc[frame["generation"] == g, column], name=f"gen {g}",
                                  box_visible=True, meanline_visible=True)
                        for g in sorted(frame["generation"].unique())])
    figure.update_layout(title=f"{column} by generation", height=320, showlegend=False)
    return figure


def completion_lengths(samples: pd.DataFrame):
    """Completion length (tokens) per task, split by why generation stopped."""
    import plotly.express as px

    figure = px.histogram(samples, x="n_completion_tokens", color="finish_reason",
                          facet_col="task" if "task" in samples.columns else None, nbins=30,
                          title="completion length by task (stop = the model ended its turn)")
    figure.update_layout(height=300, margin=dict(l=40, r=10, t=60, b=40))
    return figure


def setup_notebook() -> None:
    """Render figures so they work live in JupyterLab and in a saved, offline HTML report: plotly's
    mimetype for the lab, plus the 'notebook' renderer, which inlines plotly.js once per notebook."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"


LOOP_METRICS = {"accuracy_strict": "accuracy (strict)", "accuracy_lenient": "accuracy (lenient)",
                "heldout_perplexity": "held-out perplexity (real text)", "diversity_distinct_2": "distinct-2 (free generations)",
                "accept_rate": "accept rate", "diversity_self_bleu": "self-BLEU (free generations)"}


def loop_curves(history: pd.DataFrame, metrics: dict | None = None, by: str | None = None):
    """One panel per metric against generation (one line per `by` group, e.g. arm or policy);
    collapse-flagged generations are marked with a red x."""
    from plotly.subplots import make_subplots

    go = _go()
    metrics = {k: v for k, v in (metrics or LOOP_METRICS).items() if k in history.columns and history[k].notna().any()}
    columns = min(3, max(1, len(metrics)))
    rows = -(-len(metrics) // columns)
    figure = make_subplots(rows=rows, cols=columns, subplot_titles=list(metrics.values()))
    groups = list(history.groupby(by)) if by else [("", history)]
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]
    for index, (column, _) in enumerate(metrics.items()):
        row, col = index // columns + 1, index % columns + 1
        for number, (name, frame) in enumerate(groups):
            frame = frame.sort_values("generation")
            figure.add_trace(go.Scatter(x=frame["generation"], y=frame[column], mode="lines+markers",
                                        name=str(name) or column, legendgroup=str(name),
                                        showlegend=bool(by) and index == 0,
                                        line=dict(color=palette[number % len(palette)])), row=row, col=col)
            flagged = frame[frame.get("collapsed", pd.Series(False, index=frame.index)).fillna(False).astype(bool)]
            if len(flagged):
                figure.add_trace(go.Scatter(x=flagged["generation"], y=flagged[column], mode="markers",
                                            marker=dict(symbol="x", size=11, color="red"), showlegend=False,
                                            hovertext=flagged.get("collapse_flags"), name="collapse flag"),
                                 row=row, col=col)
        figure.update_xaxes(title_text="generation", dtick=1, row=row, col=col)
    figure.update_layout(height=300 * rows, margin=dict(l=50, r=10, t=60, b=40),
                         title="self-learning loop, per generation" + (f" (by {by})" if by else ""))
    return figure


def seed_curves(summary: pd.DataFrame, metric: str, by: str = "arm", title: str | None = None):
    """One metric of a seed summary (`workbench.experiments.summarize_seeds`: `<metric>_mean` and
    `<metric>_ci95` per `by` group and generation) against generation: one line per group, error bars the
    95% t-interval half-width across seeds (none where one seed was run), the group's seed count in its hover."""
    go = _go()
    mean, half = f"{metric}_mean", f"{metric}_ci95"
    if mean not in summary.columns:
        raise KeyError(f"the summary has no column {mean!r} (metrics: "
                       f"{sorted(c[:-5] for c in summary.columns if c.endswith('_mean'))})")
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    figure = go.Figure()
    groups = list(summary.groupby(by, sort=False)) if by else [("", summary)]
    for number, (name, frame) in enumerate(groups):
        frame = frame[frame[mean].notna()].sort_values("generation")
        if not len(frame):
            continue
        seeds = frame["seeds"] if "seeds" in frame.columns else pd.Series("?", index=frame.index)
        figure.add_trace(go.Scatter(
            x=frame["generation"], y=frame[mean], mode="lines+markers", name=str(name) or metric,
            line=dict(color=palette[number % len(palette)]),
            error_y=dict(type="data", array=frame[half].fillna(0.0) if half in frame.columns else None, visible=True),
            customdata=np.stack([frame[half].to_numpy(float) if half in frame.columns else np.full(len(frame), np.nan),
                                 seeds.to_numpy()], axis=-1),
            hovertemplate="generation %{x}: %{y:.3f} ± %{customdata[0]:.3f} (%{customdata[1]} seeds)<extra>"
                          + str(name) + "</extra>"))
    figure.update_layout(title=title or f"{metric}: mean ± 95% CI across seeds", xaxis_title="generation",
                         yaxis_title=metric, height=340, margin=dict(l=50, r=10, t=50, b=40),
                         xaxis=dict(dtick=1))
    return figure


def perplexity_histograms(frame: pd.DataFrame, title: str = "per-passage perplexity of held-out real text",
                          bins: int = 40):
    """Shumailov et al. (2024)'s figure: the distribution of per-passage perplexity on held-out real text, one
    outline per generation (a `generation` and a `perplexity` column, e.g. `model_collapse.perplexity_distribution`),
    on a log axis. Collapse shows as the later generations' mass moving right and their right tail growing."""
    go = _go()
    figure = go.Figure()
    values = frame["perplexity"].to_numpy(float)
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return figure.update_layout(title=title + " (no passages)")
    edges = np.logspace(np.log10(values.min()), np.log10(values.max()), bins + 1)
    generations = sorted(frame["generation"].unique())
    for generation in generations:
        counts, _ = np.histogram(frame.loc[frame["generation"] == generation, "perplexity"], bins=edges)
        share = counts / max(counts.sum(), 1)
        shade = int(40 + 180 * generations.index(generation) / max(len(generations) - 1, 1))
        figure.add_trace(go.Scatter(x=np.sqrt(edges[:-1] * edges[1:]), y=share, mode="lines", line_shape="hvh",
                                    name=f"generation {generation}", line=dict(color=f"rgb({shade}, 60, {255 - shade})")))
    return figure.update_layout(title=title, xaxis_type="log", xaxis_title="perplexity of one passage (log scale)",
                                yaxis_title="share of passages", height=360, margin=dict(l=50, r=10, t=50, b=40))


CATEGORY_COLORS = ["#e76f51", "#2a9d8f", "#264653", "#e9c46a", "#8d99ae", "#9467bd", "#f4a261", "#1f77b4",
                   "#8c564b", "#17becf"]  # status: rejected, accepted (the explorer's colours) come first
MAP_WIDTH = 640  # px: the explorer's map tab; 10k points stay readable, and it fits a 1000 px notebook


def map_colors(values, categories: list[str] | None) -> dict:
    """Marker settings for one trace coloured by `values`: a grader's scores on a continuous scale, or
    integer codes into `categories` on a stepped scale with one labelled colour per category."""
    values = np.asarray(values, dtype=float)
    if categories is None:
        return dict(color=values, colorscale="Viridis", cmin=None, cmax=None, showscale=True,
                    colorbar=dict(title="score", thickness=12, tickvals=None, ticktext=None))
    count = max(len(categories), 1)
    scale = []
    for index in range(count):  # each category owns [index, index + 1) / count of the scale
        color = CATEGORY_COLORS[index % len(CATEGORY_COLORS)]
        scale += [[index / count, color], [(index + 1) / count, color]]
    return dict(color=values, colorscale=scale, cmin=-0.5, cmax=count - 0.5, showscale=True,
                colorbar=dict(title="", thickness=12, tickvals=list(range(count)), ticktext=list(categories)))


def _hover(texts, limit: int = 160) -> list[str]:
    import html
    import textwrap

    return ["<br>".join(textwrap.wrap(html.escape(str(t)[:limit]), 60)) for t in texts]


def data_map_live(coords, values, categories: list[str] | None, texts, title: str = "data map"):
    """The explorer's map: ONE Scattergl trace (the point index is the row index, so a lasso's
    point_inds are rows) whose marker colour the explorer swaps on every change; lasso is the drag mode."""
    go = _go()
    coords = np.asarray(coords, dtype=float)
    figure = go.Figure([go.Scattergl(x=coords[:, 0], y=coords[:, 1], mode="markers", text=_hover(texts),
                                     hovertemplate="%{text}<extra></extra>", name="samples",
                                     marker=dict(size=5, opacity=0.75, **map_colors(values, categories)))])
    figure.update_layout(title=title, width=MAP_WIDTH, height=480, dragmode="lasso", margin=dict(l=10, r=10, t=40, b=10),
                         xaxis=dict(showticklabels=False, zeroline=False), yaxis=dict(showticklabels=False, zeroline=False))
    return figure


def data_map(points: pd.DataFrame, color: str = "generation", title: str | None = None):
    """A static map (`datamap.generations_map` output: x, y, text and the `color` column), one trace per
    value of `color` so the legend can hide and show them (e.g. one generation at a time)."""
    go = _go()
    figure = go.Figure()
    for number, (value, frame) in enumerate(points.groupby(color, sort=True)):
        figure.add_trace(go.Scattergl(x=frame["x"], y=frame["y"], mode="markers", name=f"{color} {value}",
                                      text=_hover(frame["text"]), hovertemplate="%{text}<extra></extra>",
                                      marker=dict(size=5, opacity=0.7, color=CATEGORY_COLORS[(number + 2) % len(CATEGORY_COLORS)])))
    method = points.attrs.get("map", {})
    embedding = {"lexical": "character n-gram"}.get(method.get("embedding"), "MiniLM")
    figure.update_layout(title=title or f"data map by {color} ({method.get('method', '?').upper()} of {embedding} embeddings)",
                         height=520, margin=dict(l=10, r=10, t=50, b=10), legend=dict(itemsizing="constant"),
                         xaxis=dict(showticklabels=False, zeroline=False), yaxis=dict(showticklabels=False, zeroline=False))
    return figure
