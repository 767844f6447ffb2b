"""Shared fixtures: a tiny random-weight Llama built from SmolLM2's config (fast unit tests) and the
real embedded model (integration tests; provisioned by `make models`, which `make test` runs first)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

os.environ.setdefault("WORKBENCH_PROGRESS", "lines")


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def experiment_script(name: str):
    """An experiment script's module, imported as the scripts import each other (`common` from their folder)."""
    import importlib
    import sys

    if str(EXPERIMENTS) not in sys.path:
        sys.path.insert(0, str(EXPERIMENTS))
    return importlib.import_module(name)


def smoke_argv(tmp_path: Path, model_dir) -> tuple[Path, Path, list[str]]:
    """The run folder, the results folder and the command line of an experiment's smoke on `model_dir`."""
    runs, out = tmp_path / "runs", tmp_path / "out"
    return runs, out, ["--smoke", "--runs", str(runs), "--out", str(out), "--model", str(model_dir)]


def assert_rerun_writes_nothing(main, argv: list[str], runs: Path) -> None:
    """Run an experiment's `main(argv)` again over finished runs: it must resume (read every table back) and
    write nothing new into the run folders: no new parquet part, no ledger line."""
    parts = sorted(str(p.relative_to(runs)) for p in runs.rglob("*.parquet"))
    ledgers = {p: p.read_text() for p in runs.rglob("ledger.jsonl")}
    assert main(argv) == 0
    assert sorted(str(p.relative_to(runs)) for p in runs.rglob("*.parquet")) == parts
    assert {p: p.read_text() for p in runs.rglob("ledger.jsonl")} == ledgers


def make_graded(n: int, seed: int, *, heuristics: bool = False, nan_judge=()):
    """A random graded table (one row per sample, `score__*` columns) for the selection and explorer tests:
    4 samples per prompt; judge scores uniform in [0, 1), verifier 0/1, with `heuristics` uniform in
    [0.5, 1); the judge score is NaN at the row positions `nan_judge`."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "sample_id": [f"s{i}" for i in range(n)],
        "prompt_id": [f"p{i // 4}" for i in range(n)],
        "prompt": [f"question {i // 4}" for i in range(n)],
        "completion": [f"answer {i % 53} with words w{i % 17} w{i % 5}" for i in range(n)],
        "score__judge": rng.uniform(size=n),
    })
    if heuristics:
        frame["score__heuristics"] = rng.uniform(0.5, 1.0, size=n)
    frame["score__verifier"] = rng.integers(0, 2, size=n).astype(float)
    frame.loc[list(nan_judge), "score__judge"] = np.nan
    return frame


@pytest.fixture(name="make_graded")
def make_graded_fixture():
    """`make_graded` (above) for test files: `def graded(make_graded): return make_graded(200, seed=0)`."""
    return make_graded


def widget_notebook(*, saved: bool = True, text: str = "", plotlyjs: bool = False):
    """A notebook (NotebookNode) whose one code cell displayed a FloatSlider, an HTML label and a FigureWidget in a
    VBox (state made by ipywidgets.embed, as papermill would save it), one static plotly figure (as
    workbench.viz.setup_notebook's renderers write it; plotly.js inlined when `plotlyjs`), and `text` printed.
    saved=False: the view is there, the widget state is not (a notebook saved without it)."""
    import json

    import ipywidgets as w
    import nbformat
    import numpy as np
    import plotly.graph_objects as go
    import plotly.io as pio
    from ipywidgets.embed import dependency_state, embed_data

    from workbench.report import WIDGET_STATE_MIME, WIDGET_VIEW_MIME

    slider = w.FloatSlider(value=0.37, min=0.0, max=1.0, step=0.01, description="judge")
    label = w.HTML("<span class='wb-accepted-count'><b>4</b> of 6 accepted</span>")
    bins = dict(start=0, end=1, size=0.1)  # numpy arrays: saved as binary buffers, as the explorer's are
    figure = go.FigureWidget(go.Figure([go.Histogram(x=np.array([0.52, 0.61, 0.65, 0.93]), name="accepted", xbins=bins),
                                        go.Histogram(x=np.array([0.12, 0.31]), name="rejected", xbins=bins)]))
    figure.update_layout(title="judge: 4 accepted of 6 scored", barmode="stack")
    figure._widget_layout = dict(figure._layout_obj._props)  # as displaying the figure by itself would
    box = w.VBox([slider, label, figure])
    # every trait, as nbclient saves them (anywidget's _esm); only these widgets' state: without `state`, embed_data
    # saves every widget alive in the process (other tests' explorers: the count of FigureWidgets then varied)
    data = embed_data(views=[box], state=dependency_state([box], drop_defaults=False), drop_defaults=False)
    static = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("explorer.widget", execution_count=1)
    cell.outputs = [nbformat.v4.new_output("display_data", data={
                        WIDGET_VIEW_MIME: data["view_specs"][0], "text/plain": "VBox(...)"}),
                    nbformat.v4.new_output("display_data", data={
                        "application/vnd.plotly.v1+json": json.loads(static.to_json()), "text/plain": "Figure",
                        "text/html": pio.to_html(static, include_plotlyjs=plotlyjs, full_html=False)}),
                    nbformat.v4.new_output("stream", name="stdout", text=text)]
    nb.cells = [nbformat.v4.new_markdown_cell("# A widget notebook"), cell]
    if saved:
        nb.metadata["widgets"] = {WIDGET_STATE_MIME: data["manager_state"]}
    for widget in (slider, label, figure, box):
        widget.close()
    return nb


@pytest.fixture(name="widget_notebook")
def widget_notebook_fixture():
    """`widget_notebook` (above) for test files (tests/test_report.py, tests/test_browser.py)."""
    return widget_notebook


@pytest.fixture(scope="session")
def real_model_dir():
    from workbench.models import pull

    return pull("smollm2-135m", quiet=True)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_model_dir):
    """SmolLM2's architecture and tokenizer, shrunk to 2 layers of width 64, random weights (seed 0)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(real_model_dir)
    config.update(dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=16, max_position_embeddings=256))
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # sharpen the output distribution so sampled texts stop sometimes
        model.lm_head.weight.mul_(4.0) if not config.tie_word_embeddings else model.model.embed_tokens.weight.mul_(4.0)
    folder = tmp_path_factory.mktemp("tiny-smollm2")
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(real_model_dir).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from workbench.models import load_model

    return load_model(str(tiny_model_dir), dtype="fp32")


@pytest.fixture(scope="session")
def real(real_model_dir):
    from workbench.models import load_model

    return load_model("smollm2-135m", dtype="fp32")


class SmokeReport(NamedTuple):
    out: Path          # the report folder: <name>.html, executed/<name>.ipynb
    paths: list[Path]  # the HTML files, in workbench.report.NOTEBOOKS order
    run_name: str      # the run folder under data_dir()/runs the notebooks wrote


@pytest.fixture(scope="session")
def smoke_report(tmp_path_factory, real_model_dir):
    """The notebook series executed once per session at smoke size on the real model and rendered to HTML
    (`workbench report --smoke`); shared by test_notebooks.py and test_browser.py. The run folder is removed
    at the end of the session."""
    from workbench.models import data_dir
    from workbench.report import report

    out = tmp_path_factory.mktemp("reports")
    run_name = f"test-notebooks-{os.getpid()}-{out.name}"  # unique among concurrent pytest sessions
    try:
        yield SmokeReport(out, report(run_name=run_name, smoke=True, out_dir=out), run_name)
    finally:
        shutil.rmtree(data_dir() / "runs" / run_name, ignore_errors=True)


class DemoSmoke(NamedTuple):
    run_dir: Path      # the demo's run folder; its report is under run_dir/report/
    paths: list[Path]  # the report's HTML files, in workbench.demo.SMOKE order (01, 03, 04)
    stdout: str        # what the demo printed


class _Tee:
    """stdout for the demo: kept in a buffer for the tests' checks and passed on (pytest shows it on failure)."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text):
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self):
        for stream in self.streams:
            stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno, ...: the stream passed on
        return getattr(self.streams[-1], name)


@pytest.fixture(scope="session")
def demo_smoke(tmp_path_factory, real_model_dir):
    """The main job at smoke size (`workbench.demo.main(smoke=True)`, report included) run once per session on
    the real model; shared by test_demo.py (its stages, files, export and resume) and test_browser.py (its
    reports opened offline, the explorer in 03_thresholds checked against its saved state)."""
    import contextlib
    import io
    import sys

    from workbench.demo import SMOKE, main

    run_dir = tmp_path_factory.mktemp("demo") / "demo"
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(buffer, sys.stdout)):
        code = main(smoke=True, run_dir=run_dir)
    assert code == 0, f"the demo returned {code}:\n{buffer.getvalue()[-3000:]}"
    return DemoSmoke(run_dir, [run_dir / "report" / f"{name}.html" for name in SMOKE], buffer.getvalue())
