"""`workbench report`: execute the notebook series with papermill and render each to one self-contained
HTML file under reports/ (plotly.js inlined once per file, no CDN needed for the figures).

The notebooks read and write one run folder, so each picks up what the previous one made.
"""
from __future__ import annotations

import os
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_generate", "02_grade_and_diversity", "03_thresholds", "04_self_learning_loop", "05_model_collapse",
             "06_self_grading"]

# small sizes for CI and `--smoke`: every cell runs, on the real model, in about a minute each
SMOKE = {
    "01_generate": {"n_arithmetic": 4, "n_instructions": 4, "n_corpus": 3, "max_new_tokens": 24},
    "02_grade_and_diversity": {},
    "03_thresholds": {"task": "arithmetic", "train_epochs": 1,
                      "panel_eval": {"heldout_problems": 6, "heldout_texts": 4, "diversity_prompts": 3, "diversity_tokens": 12}},
    "04_self_learning_loop": {"smoke": True},
    "05_model_collapse": {"smoke": True},
    # a render check of notebook 06 on the real model: 2 seeds x 2 arms that need no judge passes, 1 generation
    # (tests/test_experiments.py runs the experiment's smoke itself: all six arms x 3 seeds, on a tiny model);
    # each arm-seed costs ~2-3 min on 2 loaded cores, all six arms x 3 seeds would add ~30 min to the suite
    "06_self_grading": {"smoke": True, "arms": ["verifier", "consistency"], "seeds": [0, 1]},
}


def execute(name: str, parameters: dict, out_dir: Path, timeout: int = 1800) -> Path:
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    output = out_dir / f"{name}.ipynb"
    env = {"WORKBENCH_PROGRESS": os.environ.get("WORKBENCH_PROGRESS", "lines")}
    os.environ.update(env)  # the kernel inherits it: progress prints lines instead of widget bars
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(output), parameters=parameters,
                               cwd=str(NOTEBOOK_DIR), kernel_name="python3", progress_bar=False,
                               execution_timeout=timeout)
    return output


def render_html(notebook: Path, html_path: Path) -> Path:
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab")
    body, _ = exporter.from_notebook_node(nbformat.read(str(notebook), as_version=4))
    html_path.write_text(share_widget_code(body), encoding="utf-8")
    return html_path


WIDGET_STATE_TAG = '<script type="application/vnd.jupyter.widget-state+json">'
CODE_MARK = "workbench-shared-code:"
# Runs as the page is parsed, before the widget manager (loaded asynchronously) reads the saved state.
RESTORE = """<script type="application/json" id="workbench-widget-code">%s</script>
<script>(function () {
  var tag = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  var code = JSON.parse(document.getElementById("workbench-widget-code").textContent);
  var data = JSON.parse(tag.textContent), mark = "%s";
  Object.keys(data.state).forEach(function (id) {
    var state = data.state[id].state || {};
    if (typeof state._esm === "string" && state._esm.indexOf(mark) === 0) state._esm = code[+state._esm.slice(mark.length)];
  });
  tag.textContent = JSON.stringify(data);
})();</script>"""


def share_widget_code(html: str) -> str:
    """Store each distinct widget front-end bundle once in the page.

    plotly's FigureWidget is an anywidget whose saved state carries plotly's whole JS bundle (`_esm`,
    ~4.7 MB) per figure: notebook 03's explorer and training panel made a 36 MB report. The bundle is kept
    once and put back into every widget's state by a small script as the page loads, so the widget state
    the manager reads is unchanged.
    """
    import json

    start = html.find(WIDGET_STATE_TAG)
    if start < 0:
        return html
    end = html.find("</script>", start)
    state = json.loads(html[start + len(WIDGET_STATE_TAG):end])
    bundles: dict[str, int] = {}
    for model in state.get("state", {}).values():
        values = model.get("state", {})
        code = values.get("_esm")
        if isinstance(code, str) and len(code) > 10_000:
            values["_esm"] = f"{CODE_MARK}{bundles.setdefault(code, len(bundles))}"
    if not bundles:
        return html

    def script_safe(value) -> str:  # JSON inside <script>: "</" would close the tag
        return json.dumps(value).replace("</", "<\\/")

    restore = RESTORE % (script_safe(list(bundles)), CODE_MARK)
    close = end + len("</script>")
    return html[:start] + WIDGET_STATE_TAG + script_safe(state) + "</script>\n" + restore + html[close:]


def report(run_name: str = "notebooks", smoke: bool = False, out_dir: str | Path = "reports",
           notebooks: list[str] | None = None, parameters: dict[str, dict] | None = None) -> list[Path]:
    """Execute and render the notebooks; returns the HTML paths.

    run_name: a folder name under data/runs/ (or an absolute path). parameters: per-notebook overrides
    ({"04_self_learning_loop": {"generations": 2}}), applied over the smoke values when smoke=True.
    """
    out_dir = Path(out_dir)
    paths = []
    for name in notebooks or NOTEBOOKS:
        values = {"run_name": str(run_name), **(SMOKE.get(name, {}) if smoke else {}), **(parameters or {}).get(name, {})}
        executed = execute(name, values, out_dir / "executed")
        paths.append(render_html(executed, out_dir / f"{name}.html"))
        print(f"[workbench] {name}: {paths[-1]}", flush=True)
    return paths
