"""`workbench report`: execute the notebook series with papermill and render each to one self-contained
HTML file under reports/ that draws everything with the network off: plotly.js inlined once per file for the
figures, and, in a notebook with saved widget state (the threshold explorer, the training panel), require.js,
@jupyter-widgets/html-manager's AMD bundle and anywidget's front-end inlined once per file, so every widget
view renders from its saved state (never a CDN at view time; `make widgets` fetches the bundles at set-up).

Reports carry no absolute paths of the machine that made them: the repo root and the home directory in the
rendered page (parameters, outputs, widget state) are written as relative paths and `~`.

The notebooks read and write one run folder, so each picks up what the previous one made.
"""
from __future__ import annotations

import base64
import functools
import os
import re
import sys
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = ["01_generate", "02_grade_and_diversity", "03_thresholds", "04_self_learning_loop", "05_model_collapse",
             "06_self_grading", "07_self_rewarding"]

# the notebooks that display widgets (the explorer, the training panel): their reports need `make widgets`
WIDGET_NOTEBOOKS = {"03_thresholds"}

# small sizes for CI and `--smoke`: every cell runs, on the real model, in about a minute each
SMOKE = {
    "01_generate": {"n_arithmetic": 4, "n_instructions": 4, "n_corpus": 3, "max_new_tokens": 24},
    "02_grade_and_diversity": {},
    "03_thresholds": {"task": "arithmetic", "train_epochs": 1,
                      "panel_eval": {"heldout_problems": 6, "heldout_texts": 4, "diversity_prompts": 3, "diversity_tokens": 12}},
    "04_self_learning_loop": {"smoke": True},
    # 05 on the real model: replace and the detector-weighted arm, one seed, 1 generation (fewer arm-seeds than
    # the three arms it rendered before); all six arms x 3 seeds run on a tiny model in tests/test_collapse.py
    "05_model_collapse": {"smoke": True, "arms": ["replace", "detector_replace_temp_0.7"], "seeds": [0]},
    # a render check of notebook 06 on the real model: 2 seeds x 2 arms that need no judge passes, 1 generation
    # (tests/test_experiments.py runs the experiment's smoke itself: all six arms x 3 seeds, on a tiny model);
    # each arm-seed costs ~2-3 min on 2 loaded cores, all six arms x 3 seeds would add ~30 min to the suite
    "06_self_grading": {"smoke": True, "arms": ["verifier", "consistency"], "seeds": [0, 1]},
    # the same for 07: the self-judge arm (the question) beside the verifier, one seed; the experiment's smoke
    # (every arm x 3 seeds) runs on a tiny model in tests/test_experiments.py
    "07_self_rewarding": {"smoke": True, "arms": ["verifier", "self_judge"], "seeds": [0]},
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


WIDGET_VIEW_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE_MIME = "application/vnd.jupyter.widget-state+json"
MANAGER_MARK = "<!--workbench:widget-manager-->"
# nbconvert's lab template, less what it fetches from CDNs: require.js and the widget manager come back inlined
# (at MANAGER_MARK, only in pages that have widgets to draw), MathJax only in notebooks that have TeX to typeset
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block jupyter_widgets -%}""" + MANAGER_MARK + """{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- if resources.workbench_math -%}{{ super() }}{%- endif -%}{%- endblock html_head_js_mathjax -%}
"""
CDN_MATHJAX = re.compile(r'<script[^>]*\ssrc="https?://[^"]*/mathjax/[^"]*"[^>]*>\s*</script>', re.IGNORECASE)
TEX = re.compile(r"\$[^$\n]+\$|\\\(|\\\[|\\begin\{")
PLOTLY_TEX = re.compile(r'"\$[^"$]+\$"')  # plotly typesets a label with MathJax when it is all "$...$"
NOT_SAVED = ('<div class="wb-widget-not-saved" style="border:1px dashed #b08900;background:#fff8e1;color:#5c4a00;'
             'padding:6px 10px;margin:4px 0;font-size:13px">Interactive widget not shown: its state was not saved '
             'with this notebook. Execute it with <code>workbench report</code> (papermill saves widget state), or '
             'in JupyterLab use <i>Save Widget State Automatically</i> before saving.</div>')


def render_html(notebook: Path, html_path: Path) -> Path:
    """Render an executed notebook to one HTML file that draws its figures and saved widgets offline.

    A widget view whose state was not saved (a notebook run without papermill, or saved without widget
    state) shows a visible note instead of an empty output; the notebook's static figures are unaffected.
    Raises WidgetAssetsMissing (naming `make widgets`) when the notebook has widgets to draw but the
    widget manager was never fetched.
    """
    import jinja2
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(notebook), as_version=4)
    drawn = _note_unsaved_widgets(nb)
    manager = widget_scripts(str(widget_assets_dir())) if drawn else ""
    exporter = HTMLExporter(template_name="lab", template_file="workbench_report.html.j2",
                            extra_loaders=[jinja2.DictLoader({"workbench_report.html.j2": TEMPLATE})])
    math = _has_tex(nb)
    body, _ = exporter.from_notebook_node(nb, resources={"workbench_math": math})
    if MANAGER_MARK not in body:  # nbconvert's template changed its blocks: better a clear error than a CDN
        raise RuntimeError("nbconvert's lab template no longer has the `jupyter_widgets` block that "
                           "workbench.report replaces: update TEMPLATE in workbench/report.py")
    if not math:  # plotly's notebook renderer puts a MathJax CDN script into every figure's output
        body = CDN_MATHJAX.sub("", body)
    # paths first, then the inlined bundles: the replacement must never touch library code
    body = share_widget_code(strip_machine_paths(body))
    html_path.write_text(body.replace(MANAGER_MARK, manager, 1), encoding="utf-8")
    return html_path


def _note_unsaved_widgets(nb) -> bool:
    """Put NOT_SAVED in place of every widget view whose model is not in the saved state; True when some
    view has its state saved (the page needs the widget manager)."""
    saved = nb.metadata.get("widgets", {}).get(WIDGET_STATE_MIME, {}).get("state", {})
    drawn = False
    for cell in nb.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            view = output.get("data", {}).get(WIDGET_VIEW_MIME)
            if view is None:
                continue
            if view.get("model_id") in saved:
                drawn = True
            else:
                output["data"] = {"text/html": NOT_SAVED}
    return drawn


def _has_tex(nb) -> bool:
    """Whether a markdown cell, a LaTeX output or a plotly figure's text has math for MathJax (which only a CDN
    provides, so MathJax is kept only then)."""
    import json

    for cell in nb.cells:
        if cell.cell_type == "markdown" and TEX.search("".join(cell.source)):
            return True
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if "text/latex" in data or PLOTLY_TEX.search(json.dumps(data.get("application/vnd.plotly.v1+json", ""))):
                return True
    return False


# ------------------------------------------------------------------------------------------ no machine paths
def machine_paths() -> list[tuple[str, str]]:
    """(absolute path, what a report shows instead), most specific first: the repo root (paths under it become
    relative to it, e.g. data/runs/NAME) and the home directory (`~`); each as given and with symlinks resolved."""
    repo = NOTEBOOK_DIR.parent  # the checkout (editable install); in site-packages it names nothing of the user's
    pairs = []
    for path, shown in (((repo, "."),) if NOTEBOOK_DIR.is_dir() else ()) + ((Path.home(), "~"),):
        for form in {os.path.abspath(path), str(Path(path).resolve())}:
            if form not in ("/", "") and form not in {p for p, _ in pairs}:
                pairs.append((form, shown))
    return sorted(pairs, key=lambda pair: -len(pair[0]))


def strip_machine_paths(text: str) -> str:
    """Replace the repo root and home directory in `text` (the run folder in the parameters cell, checkpoint
    paths in outputs and widget state) by a relative path and `~`. Only whole path components match:
    /work/main is replaced in /work/main/data but not in /work/main2. A "/" may also be written "\\/": nbconvert
    escapes every "/" so in the widget state it puts into the page."""
    sep = r"(?:/|\\/)"
    for path, shown in machine_paths():
        pattern = sep.join(re.escape(part) for part in path.split("/")) + rf"({sep}|(?![\w.-]))"
        # under it: "<path>/x" -> "x" (or "~/x"); the folder itself -> "." (or "~")
        text = re.sub(pattern, lambda m: ("" if shown == "." else shown + m.group(1)) if m.group(1) else shown, text)
    return text


# ------------------------------------------------------------------------------------------ the widget manager
class WidgetAssetsMissing(FileNotFoundError):
    """The widget manager a report inlines was never fetched (`make widgets`)."""


def widget_assets_dir() -> Path:
    """Where `make widgets` unpacks require.js and html-manager's embed-amd.js: $WORKBENCH_WIDGET_ASSETS, else
    <venv>/share/workbench/widgets (the venv that runs the report)."""
    return Path(os.environ.get("WORKBENCH_WIDGET_ASSETS") or Path(sys.prefix) / "share" / "workbench" / "widgets")


def _script(code: str, what: str) -> str:
    # inside <script> only "</script" ends the element (and "<!--" changes how it is parsed): neither must occur
    if re.search(r"</script|<!--", code, re.IGNORECASE):
        raise ValueError(f"{what} contains </script or <!--: it cannot be inlined as is")
    return f"<script>/* {what} */\n{code}\n</script>"


@functools.lru_cache(maxsize=4)
def widget_scripts(folder: str) -> str:
    """The <script> tags that draw saved widget state offline, put once into each report that has widgets
    (~3.9 MB): require.js; anywidget's AMD front-end named "anywidget" (plotly's FigureWidget is an anywidget;
    a named define, so require.js finds it in the page and never fetches it); html-manager's embed-amd.js, which
    on page load reads the saved state and draws each view (it asks require.js for each widget module and would
    fall back to a CDN only for a module the page lacks). Its Font Awesome woff2 fonts (button icons) are
    inlined as data: URLs for the same reason."""
    import importlib.resources

    root = Path(folder)
    missing = [name for name in ("require.js", "embed-amd.js") if not (root / name).is_file()]
    if missing:
        raise WidgetAssetsMissing(
            f"The HTML report's widget manager is not set up: {', '.join(missing)} missing from {root}. Run "
            "`make widgets` (`make test` and `make demo` run it): it fetches @jupyter-widgets/html-manager and "
            "requirejs from the npm registry into the venv. Or set WORKBENCH_WIDGET_ASSETS to a folder that "
            "holds require.js and embed-amd.js.")
    manager = (root / "embed-amd.js").read_text(encoding="utf-8")

    def font(match: re.Match) -> str:
        path = root / match.group(1)
        if not path.is_file():
            raise WidgetAssetsMissing(f"{path} is missing (embed-amd.js names it): run `make widgets` again.")
        return '"data:font/woff2;base64,' + base64.b64encode(path.read_bytes()).decode("ascii") + '"'

    manager = re.sub(r'\b[A-Za-z_$][\w$]*\.p\+"([0-9a-f]{20}\.woff2)"', font, manager)
    try:
        anywidget = (importlib.resources.files("anywidget") / "nbextension" / "index.js").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise WidgetAssetsMissing(f"anywidget's front-end (anywidget/nbextension/index.js) is missing ({exc}): "
                                  "`pip install anywidget` (plotly's FigureWidget needs it).") from exc
    # the bundle ends in an anonymous define(["@jupyter-widgets/base"], ...), which require.js rejects in an
    # inline script: hand it a define that names the module
    anywidget = ("(function (define) {\n" + anywidget +
                 '\n})(function (deps, factory) { window.define("anywidget", deps, factory); });')
    return "\n".join([_script((root / "require.js").read_text(encoding="utf-8"), "require.js (npm: requirejs)"),
                      _script(anywidget, "anywidget's front-end (PyPI: anywidget, nbextension/index.js)"),
                      _script(manager, "@jupyter-widgets/html-manager dist/embed-amd.js (npm)")])


WIDGET_STATE_TAG = '<script type="application/vnd.jupyter.widget-state+json">'
CODE_MARK = "workbench-shared-code:"
# Runs as the page is parsed, before the widget manager reads the saved state (on the window's load event).
# anywidget imports each model's `_esm` from a blob URL of its own, so 7 FigureWidgets would parse the same
# 4.7 MB bundle 7 times (~2.5x slower to draw notebook 03's report): each bundle gets one blob URL, and each
# model a two-line module that re-exports it, which the browser's module map loads once.
RESTORE = """<script type="application/json" id="workbench-widget-code">%s</script>
<script>(function () {
  var tag = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
  var code = JSON.parse(document.getElementById("workbench-widget-code").textContent);
  var data = JSON.parse(tag.textContent), mark = "%s", urls = {};
  Object.keys(data.state).forEach(function (id) {
    var state = data.state[id].state || {};
    if (typeof state._esm !== "string" || state._esm.indexOf(mark) !== 0) return;
    var i = +state._esm.slice(mark.length);
    urls[i] = urls[i] || URL.createObjectURL(new Blob([code[i]], {type: "text/javascript"}));
    state._esm = 'export * from "' + urls[i] + '";\\nexport { default } from "' + urls[i] + '";';
  });
  tag.textContent = JSON.stringify(data);
})();</script>"""


def share_widget_code(html: str) -> str:
    """Store each distinct widget front-end bundle once in the page.

    plotly's FigureWidget is an anywidget whose saved state carries plotly's whole JS bundle (`_esm`,
    ~4.7 MB) per figure: notebook 03's explorer and training panel made a 36 MB report. The bundle is kept
    once; as the page loads, a small script (RESTORE) gives every widget's state a module that re-exports
    it from one blob URL, which the manager then reads (the state is otherwise unchanged).
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
    if WIDGET_NOTEBOOKS & set(notebooks or NOTEBOOKS):  # fail now, not after minutes of executing notebooks
        widget_scripts(str(widget_assets_dir()))
    paths = []
    for name in notebooks or NOTEBOOKS:
        values = {"run_name": str(run_name), **(SMOKE.get(name, {}) if smoke else {}), **(parameters or {}).get(name, {})}
        executed = execute(name, values, out_dir / "executed")
        paths.append(render_html(executed, out_dir / f"{name}.html"))
        print(f"[workbench] {name}: {paths[-1]}", flush=True)
    return paths
