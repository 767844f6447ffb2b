"""workbench.report's HTML rendering on small hand-made notebooks (no kernel, no browser): the widget manager
inlined once and only where widgets were saved, a clear error when `make widgets` never ran, a visible note
for widgets whose state was not saved, and no absolute paths of this machine in the page.
(tests/test_browser.py opens such pages offline; tests/test_notebooks.py checks the real smoke reports.)"""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest

from workbench import report

REPO = str(Path(report.__file__).resolve().parent.parent)
HOME = str(Path.home())


def render(nb, tmp_path: Path, name: str = "page") -> str:
    """The HTML workbench.report makes of `nb` (written to tmp_path/<name>.ipynb first)."""
    path = tmp_path / f"{name}.ipynb"
    nbformat.write(nb, str(path))
    return report.render_html(path, tmp_path / f"{name}.html").read_text(encoding="utf-8")


def test_widget_manager_inlined_once_and_no_cdn(tmp_path, widget_notebook):
    html = render(widget_notebook(), tmp_path)
    # require.js, anywidget's front-end (a named AMD module) and html-manager's embed bundle, once each
    assert html.count("/* require.js (npm: requirejs) */") == 1
    assert html.count('window.define("anywidget", deps, factory)') == 1
    assert html.count("/* @jupyter-widgets/html-manager dist/embed-amd.js (npm) */") == 1
    # ... with its icon fonts as data: URLs, and nothing the page would fetch from elsewhere
    assert "data:font/woff2;base64," in html
    assert not re.findall(r"<script[^>]*\ssrc=\"https?://", html), "a <script src> from the network"
    assert "cdnjs.cloudflare.com/ajax/libs/require.js" not in html  # (MathJax: dropped, the notebook has no TeX)
    # the FigureWidget's plotly bundle (~4.7 MB) is stored once and put back into the state as the page loads
    assert html.count(report.CODE_MARK + "0") == 1
    assert html.count('<script type="application/vnd.jupyter.widget-view+json">') == 1
    assert "wb-widget-not-saved" not in html


def test_pages_without_widgets_carry_no_manager(tmp_path, widget_notebook):
    nb = widget_notebook()
    nb.cells[1].outputs = nb.cells[1].outputs[1:]  # the static figure only
    del nb.metadata["widgets"]
    html = render(nb, tmp_path)
    assert "embed-amd.js" not in html and "require.js" not in html
    assert html.count("Plotly.newPlot") >= 1


def test_unsaved_widget_state_shows_a_note_and_keeps_static_figures(tmp_path, monkeypatch, widget_notebook):
    # nothing to draw: the page needs no widget manager, so a machine without `make widgets` renders it too
    monkeypatch.setenv("WORKBENCH_WIDGET_ASSETS", str(tmp_path / "nowhere"))
    html = render(widget_notebook(saved=False), tmp_path)
    assert html.count('class="wb-widget-not-saved"') == 1
    assert "state was not saved" in html
    assert report.WIDGET_VIEW_MIME not in html and "embed-amd.js" not in html
    assert html.count("Plotly.newPlot") >= 1  # the static figure stays


def test_missing_widget_manager_names_the_make_target(tmp_path, monkeypatch, widget_notebook):
    monkeypatch.setenv("WORKBENCH_WIDGET_ASSETS", str(tmp_path / "nowhere"))
    with pytest.raises(report.WidgetAssetsMissing, match=r"make widgets") as error:
        render(widget_notebook(), tmp_path)
    assert "require.js" in str(error.value) and str(tmp_path / "nowhere") in str(error.value)


def test_no_absolute_paths_of_this_machine(tmp_path, widget_notebook):
    run = f"{REPO}/data/runs/demo"
    text = f"Run('{run}')\ncheckpoint {run}/gen-001/checkpoint\ncwd {REPO}\ncache {HOME}/.cache/workbench\n"
    nb = widget_notebook(text=text)
    nb.cells.insert(1, nbformat.v4.new_code_cell(f'# Parameters\nrun_name = "{run}"\n'))
    for model in nb.metadata["widgets"][report.WIDGET_STATE_MIME]["state"].values():  # the training panel's status
        if model["model_name"] == "HTMLModel":
            model["state"]["value"] += f" checkpoint {run}/panel/checkpoint"
    html = render(nb, tmp_path)
    for path in (REPO, HOME):  # as written, and as nbconvert escapes it in widget state ("\/")
        assert path not in html and path.replace("/", "\\/") not in html, path
    assert "Run(&#39;data/runs/demo&#39;)" in html or "Run('data/runs/demo')" in html
    assert "checkpoint data/runs/demo/gen-001/checkpoint" in html and "cache ~/.cache/workbench" in html
    assert "cwd .\n" in html
    assert "checkpoint data/runs/demo/panel/checkpoint" in html.replace("\\/", "/")  # in the widget state
    # only whole path components: a sibling folder whose name starts the same is not the repo
    strip = report.strip_machine_paths
    assert strip(f"{REPO}2/x {REPO}-old {REPO}").split(" ") == [strip(f"{REPO}2/x"), strip(f"{REPO}-old"), "."]
    assert strip(f"{REPO}2/x").endswith(f"{Path(REPO).name}2/x") and strip(f"{REPO}-old").endswith("-old")


def test_report_fails_before_executing_when_the_manager_is_missing(tmp_path, monkeypatch):
    """`workbench report` of the series says what to run at once, not after minutes of executing notebooks."""
    monkeypatch.setenv("WORKBENCH_WIDGET_ASSETS", str(tmp_path / "nowhere"))
    executed = []
    monkeypatch.setattr(report, "execute", lambda *args, **kwargs: executed.append(args))
    with pytest.raises(report.WidgetAssetsMissing, match=r"make widgets"):
        report.report(run_name="unused", out_dir=tmp_path, notebooks=["01_generate", "03_thresholds"])
    assert executed == []
