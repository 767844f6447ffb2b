"""The notebook series executed by papermill at smoke size on the real model, and the HTML report."""
import json
import re

import pytest

from workbench.report import NOTEBOOKS


@pytest.fixture(scope="module")
def rendered(smoke_report):
    """The session's smoke report (tests/conftest.py), also opened in a browser by test_browser.py."""
    return smoke_report.out, smoke_report.paths


def test_notebooks_execute_without_errors(rendered):
    out, paths = rendered
    assert [p.stem for p in paths] == NOTEBOOKS
    for name in NOTEBOOKS:
        notebook = json.loads((out / "executed" / f"{name}.ipynb").read_text())
        outputs = [o for c in notebook["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
        assert not [o for o in outputs if o["output_type"] == "error"], name
        assert any(o["output_type"] in ("execute_result", "display_data") for o in outputs), name


def test_key_outputs_present(rendered):
    out, _ = rendered
    generate = (out / "executed" / "01_generate.ipynb").read_text()
    assert "arithmetic" in generate and "instructions" in generate and "corpus" in generate
    grade = (out / "executed" / "02_grade_and_diversity.ipynb").read_text()
    assert "roc_auc" in grade and "distinct_2" in grade
    thresholds = (out / "executed" / "03_thresholds.ipynb").read_text()
    assert "n_accepted" in thresholds and "application/vnd.jupyter.widget-view+json" in thresholds


def test_html_is_self_contained(rendered):
    out, paths = rendered
    for path in paths:
        html = path.read_text()
        # plotly.js inlined once per file, figures present, no CDN script for plotly
        assert html.count("Plotly.newPlot") >= 1, path.name
        assert len(re.findall(r"plotly\.js v\d", html)) == 1 or html.count("define('plotly'") <= 1
        assert not re.search(r"<script[^>]+src=\"https?://cdn\.plot\.ly", html)
    slider = (out / "03_thresholds.html").read_text()
    assert '"sliders"' in slider and "accepted" in slider
