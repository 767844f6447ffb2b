"""The notebook series executed by papermill at smoke size on the real model, and the HTML report."""
import json
import os
import re
from pathlib import Path

import pytest

from workbench.report import NOTEBOOKS, SMOKE


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


def _outputs(out, name):
    """What the executed notebook's code cells printed or displayed, never their source (which names the
    same tasks, graders and keys): the text (streams, text/plain) and the mime type of every output."""
    notebook = json.loads((out / "executed" / f"{name}.ipynb").read_text())
    texts, mimes = [], []
    for cell in notebook["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            texts.append("".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", "")))
            mimes.extend(output.get("data", {}))
    return "\n".join(texts), mimes


def _number(pattern, text):
    match = re.search(pattern, text, re.MULTILINE)
    assert match, pattern
    return float(match.group(1))


def test_key_outputs_present(rendered):
    out, _ = rendered
    # 01: run.summary() lists, per task, the samples written and the prompts asked (the smoke sizes)
    text, mimes = _outputs(out, "01_generate")
    samples = {}
    for task in ("arithmetic", "instructions", "corpus"):
        row = re.search(rf"^\d+\s+0\s+{task}\s+(\d+)\s+(\d+)\s", text, re.MULTILINE)
        assert row, f"no summary row for {task}"
        samples[task] = int(row.group(1))
        assert int(row.group(2)) == SMOKE["01_generate"][f"n_{task}"] and samples[task] >= int(row.group(2))
    assert "application/vnd.plotly.v1+json" in mimes  # the completion-length figure
    # 02: the score table, the diversity table over each task's samples, the judge audit on arithmetic
    text, mimes = _outputs(out, "02_grade_and_diversity")
    assert "score__verifier" in text and "score__judge" in text
    n_texts = re.search(r"^n_texts\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.MULTILINE)
    assert n_texts and [float(v) for v in n_texts.groups()] == [samples[t] for t in sorted(samples)]
    distinct_2 = re.search(r"^distinct_2\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)", text, re.MULTILINE)
    assert distinct_2 and all(0 < float(v) <= 1 for v in distinct_2.groups())
    assert _number(r"'n': (\d+)", text) == samples["arithmetic"]
    roc_auc = re.search(r"'roc_auc': (nan|[\d.]+)", text)
    assert roc_auc and (roc_auc.group(1) == "nan" or 0 <= float(roc_auc.group(1)) <= 1)
    assert mimes.count("application/vnd.plotly.v1+json") >= len(samples)  # score histograms, per task at least
    # 03: the explorer widget, its summary over the chosen task's samples, and the before/after fine-tune table
    text, mimes = _outputs(out, "03_thresholds")
    assert "application/vnd.jupyter.widget-view+json" in mimes
    n_samples = _number(r"'n_samples': (\d+)", text)
    assert n_samples == samples[SMOKE["03_thresholds"]["task"]]
    assert 0 <= _number(r"'n_accepted': (\d+)", text) <= n_samples
    perplexity = re.search(r"heldout_perplexity\s+([\d.]+)\s+([\d.]+)", text)  # the metric, before, after
    assert perplexity and all(float(v) > 1 for v in perplexity.groups()), "no before/after fine-tune table"


def test_html_is_self_contained(rendered):
    out, paths = rendered
    for path in paths:
        html = path.read_text()
        # plotly.js inlined once per file, figures present, no CDN script for plotly
        assert html.count("Plotly.newPlot") >= 1, path.name
        assert len(re.findall(r"plotly\.js v\d", html)) == 1, path.name
        assert html.count("define('plotly'") <= 1, path.name
        assert not re.search(r"<script[^>]+src=\"https?://cdn\.plot\.ly", html)
    slider = (out / "03_thresholds.html").read_text()
    assert '"sliders"' in slider and "accepted" in slider


def test_reports_carry_no_machine_paths(rendered):
    """The parameters cell names the run folder and outputs name checkpoints: no report may show where this
    machine keeps the repo or whose home it is (workbench.report writes them relative and as ~)."""
    _, paths = rendered
    repo, home = Path(__file__).resolve().parents[1], Path.home()
    machine = {str(p) for p in (repo, home, repo.absolute(), home.resolve(), Path(os.path.abspath(repo)))} - {"/", ""}
    for path in paths:
        html = path.read_text(encoding="utf-8")
        # as written, and as nbconvert escapes it in widget state ("\/")
        found = {p: html.count(p) for path in machine for p in (path, path.replace("/", "\\/")) if p in html}
        assert not found, f"{path.name} shows this machine's paths {found}"
    from workbench.models import data_dir

    if data_dir().resolve().is_relative_to(repo):  # the run folder is still named, relative to the repo
        assert "data/runs/" in (paths[0].parent / "01_generate.html").read_text(encoding="utf-8")
