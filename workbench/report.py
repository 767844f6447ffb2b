"""`workbench report`: execute the notebook series with papermill and render each to one self-contained
HTML file under reports/ (plotly.js inlined once per file, no CDN needed for the figures).

The notebooks read and write one run folder, so each picks up what the previous one made.
"""
from __future__ import annotations

import os
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_generate", "02_grade_and_diversity", "03_thresholds", "04_self_learning_loop", "05_model_collapse"]

# small sizes for CI and `--smoke`: every cell runs, on the real model, in about a minute each
SMOKE = {
    "01_generate": {"n_arithmetic": 4, "n_instructions": 4, "n_corpus": 3, "max_new_tokens": 24},
    "02_grade_and_diversity": {},
    "03_thresholds": {"task": "arithmetic", "train_epochs": 1,
                      "panel_eval": {"heldout_problems": 6, "heldout_texts": 4, "diversity_prompts": 3, "diversity_tokens": 12}},
    "04_self_learning_loop": {"smoke": True},
    "05_model_collapse": {"smoke": True},
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
    html_path.write_text(body, encoding="utf-8")
    return html_path


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
