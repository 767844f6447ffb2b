"""A real JupyterLab in a real browser, and the HTML report in a browser with the network off.

1. JupyterLab serves a copy of notebooks/03_thresholds.ipynb whose parameters point at the session's smoke
   run (the one tests/test_notebooks.py checks, made once by the `smoke_report` fixture). Debian's chromium,
   driven by playwright, runs all cells, moves one threshold slider with the keyboard and waits until the
   accepted-count label and that grader's histogram show what this test computes itself from the run's
   parquet files with pandas/numpy.
2. The rendered HTML reports are opened offline (every non-file request aborted, none may be made): every
   plotly output of the executed notebooks must draw an svg, and every widget view saved in them (the
   explorer, the training panel) must show its saved state: slider values, the count label and other HTML
   widgets' text, each histogram's bar heights bin by bin, the loss curve's points. A small hand-made widget
   page gets the same checks in seconds.
3. The demo's own reports (`workbench.demo.main(smoke=True)`, run once by the `demo_smoke` fixture that
   tests/test_demo.py shares) get the same offline checks: its 03_thresholds report shows the explorer, on
   screen, with its saved state (count label, sliders, histogram bars); a screenshot lands in tmp_path.

Needs /usr/bin/chromium (`make test` installs it with apt) and the `playwright` package (dev extra), which
drives that binary: `playwright install` is never run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench.report import SMOKE as REPORT_SMOKE

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic"]
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "03_thresholds.ipynb"
SMOKE = {**REPORT_SMOKE.get(NOTEBOOK.stem, {}), "train_on_selection": False}  # the explorer only: no fine-tuning
TASK = SMOKE.get("task", "instructions")  # the notebook's default when the smoke values give none
VERIFIER = "verifier"  # ThresholdExplorer's default: no slider for it
PLOTLY_MIME = "application/vnd.plotly.v1+json"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def chromium():
    """Checked first (a session fixture listed first), so a missing browser fails before the smoke report runs."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium with `make chromium` (run by `make test`), "
                    "i.e. `apt-get update && apt-get install -y chromium`.", pytrace=False)
    if importlib.util.find_spec("playwright") is None:
        pytest.fail("The `playwright` package is missing: `.venv/bin/pip install -e '.[dev]'` (never run "
                    "`playwright install`: the test drives /usr/bin/chromium).", pytrace=False)
    return CHROMIUM


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
        try:
            yield instance
        finally:
            instance.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


@pytest.fixture(scope="module")
def lab(tmp_path_factory, smoke_report):
    """JupyterLab on 127.0.0.1 serving 03_thresholds.ipynb parameterized for the smoke run (not executed)."""
    import papermill

    root = tmp_path_factory.mktemp("lab-root")
    state = tmp_path_factory.mktemp("lab-state")
    papermill.execute_notebook(str(NOTEBOOK), str(root / NOTEBOOK.name), prepare_only=True, progress_bar=False,
                               parameters={**SMOKE, "run_name": smoke_report.run_name})
    port = _free_port()
    env = dict(os.environ, WORKBENCH_PROGRESS="lines", JUPYTER_CONFIG_DIR=str(state / "config"),
               JUPYTER_DATA_DIR=str(state / "data"), JUPYTER_RUNTIME_DIR=str(state / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(state / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(state / "settings"))
    env.pop("JUPYTER_TOKEN", None)
    log = state / "server.log"
    with open(log, "wb") as handle:  # a file, never a PIPE: a full pipe would block the server
        server = subprocess.Popen(
            [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", "--ServerApp.token=", "--ServerApp.password=",
             "--ServerApp.disable_check_xsrf=True", "--ServerApp.allow_root=True", f"--ServerApp.root_dir={root}",
             "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: the kernels go down with it
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if server.poll() is not None:
                pytest.fail(f"jupyter lab exited with {server.returncode}:\n{_tail(log)}", pytrace=False)
            try:
                with urllib.request.urlopen(f"{url}/api/status", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"jupyter lab did not answer on {url} within 90 s:\n{_tail(log)}", pytrace=False)
            time.sleep(0.3)
        yield {"url": url, "log": log, "notebook": NOTEBOOK.name}
    finally:
        server.terminate()  # SIGTERM: the server shuts its kernels down and exits
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(server.pid, signal.SIGKILL)  # whatever of our process group is left (a stuck kernel)
        except ProcessLookupError:
            pass
        server.wait(timeout=10)


# ---------------------------------------------------------------------------------------------- expectations
def _read_table(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("*.parquet"))
    assert parts, f"no parquet parts in {folder}"
    return pd.concat([pd.read_parquet(part) for part in parts], ignore_index=True)


def _scores_for_task(run_dir: Path, task: str) -> pd.DataFrame:
    """One column per grader (its scores for the task's samples, by sample_id), read straight from parquet."""
    generation = run_dir / "gen-000"
    samples = _read_table(generation / "samples")
    samples = samples[samples["task"] == task].reset_index(drop=True)
    columns = {}
    for folder in sorted((generation / "scores").iterdir()):
        scores = _read_table(folder)
        values = samples["sample_id"].map(dict(zip(scores["sample_id"], scores["score"]))).astype(float)
        if values.notna().any():  # 03 drops graders that scored none of the task's samples
            columns[folder.name] = values.to_numpy()
    return pd.DataFrame(columns)


def _plan(scores: pd.DataFrame) -> dict:
    """Which slider to move and how far, and what the explorer must then show.

    The explorer's sliders (one per grader but the verifier) start at each grader's minimum with
    step (max - min) / 200; a row is accepted when every slider grader scores >= its threshold (NaN: rejected).
    Picks the grader with the most distinct scores and the fewest key presses that accept about half the
    rows, keeping the threshold at least a quarter step away from every score (no float ties)."""
    graders = [name for name in scores.columns if name != VERIFIER]
    assert graders, f"no slider graders among {list(scores.columns)}"
    values = scores[graders].to_numpy(dtype=float)
    base = np.all(np.isfinite(values), axis=1)  # every other slider sits at its minimum: only NaN rejects
    name = max(graders, key=lambda g: (scores[g].dropna().nunique(), -graders.index(g)))
    column = scores[name].to_numpy(dtype=float)
    finite = column[np.isfinite(column)]
    assert len(np.unique(finite)) >= 2, f"the smoke run's {TASK} scores give no grader a slider range: {scores}"
    low, high = float(finite.min()), float(finite.max())
    step = max((high - low) / 200, 1e-6)
    best = None
    for presses in range(1, 201):
        threshold = low + presses * step
        if np.min(np.abs(finite - threshold)) < step / 4:
            continue
        accepted = base & (column >= threshold)
        count = int(accepted.sum())
        if count in (0, int(base.sum())):
            continue
        key = abs(count - base.sum() / 2)
        if best is None or key < best[0]:
            best = (key, presses, threshold, accepted)
    assert best is not None, f"no key-press count changes the accepted set of {name}: {finite}"
    _, presses, threshold, accepted = best
    return {"grader": name, "presses": presses, "threshold": threshold, "step": step, "n": len(scores),
            "initial": int(base.sum()), "accepted": int(accepted.sum()),
            "histogram_accepted": int((accepted & np.isfinite(column)).sum())}


def _count_text(accepted: int, n: int) -> str:
    return f"{accepted} of {n} accepted"


# ---------------------------------------------------------------------------------------------- JupyterLab
KERNEL_IDLE = """() => {
    const widget = window.jupyterapp && window.jupyterapp.shell.currentWidget;
    const context = widget && widget.sessionContext;
    return !!(context && context.isReady && context.session && context.session.kernel
              && context.session.kernel.status === 'idle' && widget.content && widget.content.widgets.length);
}"""
RUN_ALL = "() => { window.jupyterapp.commands.execute('notebook:run-all-cells'); }"  # not awaited
CELL_ERRORS = """() => {  // ename: evalue and traceback of every error output in the notebook
    const widget = window.jupyterapp.shell.currentWidget;
    const errors = [];
    for (const cell of widget.content.widgets) {
        if (cell.model.type !== 'code') continue;
        for (let i = 0; i < cell.model.outputs.length; i++) {
            const output = cell.model.outputs.get(i).toJSON();
            if (output.output_type === 'error')
                errors.push(`${output.ename}: ${output.evalue}\\n${(output.traceback || []).join('\\n')}`);
        }
    }
    return errors.join('\\n---\\n').replace(/\\x1b\\[[0-9;]*m/g, '');
}"""
ALL_RUN = """() => {  // the kernel is idle and every code cell has run (or one failed: run-all stops there)
    const widget = window.jupyterapp.shell.currentWidget;
    const kernel = widget && widget.sessionContext.session && widget.sessionContext.session.kernel;
    if (!kernel || kernel.status !== 'idle') return false;
    return (""" + CELL_ERRORS + """)() !== '' || widget.content.widgets.every(
        cell => cell.model.type !== 'code' || cell.model.executionCount !== null);
}"""
# textContent, not innerText: JupyterLab 4 skips rendering cells scrolled out of view (content-visibility), and
# innerText of a skipped element is '' although the kernel has set it; run-all leaves the view at the last cell
COUNT_IS = "text => { const e = document.querySelector('.wb-accepted-count'); return !!e && e.textContent.trim().startsWith(text); }"
SHOW_EXPLORER = "() => { const e = document.querySelector('.wb-accepted-count'); if (e) e.scrollIntoView({block: 'start'}); return !!e; }"
HISTOGRAM = """grader => {
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(
        p => p.layout && p.layout.title && String(p.layout.title.text || '').startsWith(grader + ':'));
    if (!plot || !plot._fullData || !plot.calcdata) return null;
    const index = plot._fullData.findIndex(t => t.name === 'accepted');
    if (index < 0) return null;
    const bins = plot.calcdata[index] || [];
    const shape = (plot.layout.shapes || [])[0];
    return {x: plot._fullData[index].x ? plot._fullData[index].x.length : 0,
            binned: bins.reduce((sum, bin) => sum + (bin.s || 0), 0),
            title: String(plot.layout.title.text), line: shape ? Number(shape.x0) : null,
            svg: !!plot.querySelector('.main-svg')};
}"""


FIGURE_FIT = """() => {  // each explorer figure: drawn, inside its grid cell and the output area, x-axis covering its data
    const grid = document.querySelector('.widget-gridbox');
    if (!grid) return null;
    const area = (grid.closest('.jp-OutputArea-output') || grid.parentElement).getBoundingClientRect();
    const cells = [...grid.children];
    const plots = [...document.querySelectorAll('.js-plotly-plot')].filter(p => grid.contains(p));
    if (plots.length < cells.length) return cells.map(() => ({drawn: false, plots: plots.length}));
    return plots.map(plot => {
        const svg = plot.querySelector('svg.main-svg');
        if (!svg || !plot._fullLayout || !plot._fullLayout.xaxis) return {drawn: false};
        const cell = cells.find(c => c.contains(plot)) || grid;
        const box = cell.getBoundingClientRect(), drawn = svg.getBoundingClientRect();
        let low = Infinity, high = -Infinity;
        for (const trace of plot._fullData || [])
            for (const x of (trace.x || [])) if (Number.isFinite(x)) { low = Math.min(low, x); high = Math.max(high, x); }
        return {drawn: true, title: String((plot.layout.title && plot.layout.title.text) || ''),
                width: drawn.width, cell: box.width, fits: drawn.left >= box.left - 1 && drawn.right <= box.right + 1
                                          && drawn.left >= area.left - 1 && drawn.right <= area.right + 1,
                range: plot._fullLayout.xaxis.range.map(Number), low, high};
    });
}"""


def _check_figures_fit(page, widths=(1500, 1000)) -> None:
    """The explorer's figures fit their cells at a wide and a narrow window (they were wider than their 480 px
    cells and cut off: the heuristics axis ended near 0.65 with the accepted bars at 0.85-1.0 out of sight)."""
    for width in widths:
        page.set_viewport_size({"width": width, "height": 1100})
        page.evaluate(SHOW_EXPLORER)
        page.wait_for_timeout(1500)  # JupyterLab re-lays out the panel after a resize
        try:  # FigureWidgets draw asynchronously (each loads plotly's bundle) after the count label is set
            page.wait_for_function(f"() => {{ const f = ({FIGURE_FIT})(); return !!f && f.length > 0 && "
                                   "f.every(x => x.drawn); }", timeout=90_000, polling=500)
        except Exception:
            pass  # the assertions below say which figure is missing
        figures = page.evaluate(FIGURE_FIT)
        assert figures, f"no explorer figure grid at {width} px"
        for figure in figures:
            if not figure["drawn"]:
                cell = page.evaluate("() => { const g = document.querySelector('.widget-gridbox');"
                                     " return g && g.children.length ? g.children[0].outerHTML.slice(0, 800) : null; }")
                pytest.fail(f"an explorer figure is not drawn at {width} px: {figures}\nfirst cell: {cell}", pytrace=False)
            assert figure["fits"], f"{figure['title']!r} is wider than its cell at a {width} px window: {figure}"
            if figure["low"] <= figure["high"]:  # the x-axis shows every value the figure holds
                assert figure["range"][0] <= figure["low"] and figure["range"][1] >= figure["high"], figure
    page.set_viewport_size({"width": widths[0], "height": 1100})
    page.evaluate(SHOW_EXPLORER)


MAP_POINTS = """() => {  // the data map's points in page pixels (plotly's own axis conversion)
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(p => p.layout && p.layout.dragmode === 'lasso');
    if (!plot || !plot._fullLayout || !plot._fullLayout.xaxis || !plot.querySelector('svg.main-svg')) return null;
    const box = plot.getBoundingClientRect(), size = plot._fullLayout._size;
    const xa = plot._fullLayout.xaxis, ya = plot._fullLayout.yaxis, trace = plot._fullData[0];
    if (!box.width || !trace) return null;
    const points = Array.from(trace.x, (x, i) => [box.left + size.l + xa.d2p(x), box.top + size.t + ya.d2p(trace.y[i])]);
    return {points, area: [box.left + size.l, box.top + size.t, box.left + size.l + size.w, box.top + size.t + size.h]};
}"""


def _lasso_and_exclude(page, run_dir: Path) -> None:
    """Open the explorer's data-map tab, drag a lasso (a rectangle) around the left part of the points with the
    mouse, check the kernel picked exactly the points inside it, and exclude them with one click: the run's
    stored labels must then hold those samples as 'exclude'."""
    from workbench import Run

    page.locator(".lm-TabBar-tab", has_text="data map").first.click()
    page.wait_for_function(f"() => ({MAP_POINTS})() !== null", timeout=30_000, polling=250)
    page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].find(p => p.layout && p.layout.dragmode"
                  " === 'lasso').scrollIntoView({block: 'center'})")
    page.wait_for_timeout(500)
    drawn = page.evaluate(MAP_POINTS)
    points, (left, top, right, bottom) = drawn["points"], drawn["area"]
    xs = sorted({round(x, 3) for x, _ in points})
    assert len(xs) >= 2, f"the smoke run's map has fewer than 2 distinct x positions: {points}"
    cut = (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2  # between two points' x: none sits on the edge
    # the lasso must start on the plot area (a drag from the margin does not select): its full height, from
    # its left edge to the cut; every drawn point lies inside the plot area
    left, top, bottom = left + 2, top + 2, bottom - 2
    assert all(left < x < right and top < y < bottom for x, y in points), (points, drawn["area"])
    inside = sum(x < cut for x, _ in points)
    corners = [(left, top), (cut, top), (cut, bottom), (left, bottom), (left, top)]
    page.mouse.move(*corners[0])
    page.mouse.down()
    for corner in corners[1:]:
        page.mouse.move(*corner, steps=8)
    page.mouse.up()
    try:
        page.wait_for_function("n => { const e = document.querySelector('.wb-map-picked-count');"
                               " return !!e && e.textContent.trim() === n + ' picked'; }", arg=inside,
                               timeout=30_000, polling=200)
    except Exception:
        shown = page.evaluate("() => { const e = document.querySelector('.wb-map-picked-count'); return e && e.textContent; }")
        pytest.fail(f"a lasso around {inside} of {len(points)} points showed {shown!r}", pytrace=False)
    page.locator(".widget-button", has_text="exclude").first.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        excluded = [s for s, label in Run(run_dir).labels().items() if label == "exclude"]
        if len(excluded) == inside:
            break
        time.sleep(0.3)
    assert len(excluded) == inside, f"after 'exclude' the run holds {len(excluded)} excluded samples, not {inside}"
    page.locator(".widget-button", has_text="clear label").first.click()  # the smoke run as it was, for later tests
    deadline = time.monotonic() + 30
    while Run(run_dir).labels() and time.monotonic() < deadline:
        time.sleep(0.3)
    assert not Run(run_dir).labels(), "'clear label' left labels in the run"


def _diagnose(page, lab) -> str:
    try:
        errors = page.evaluate(CELL_ERRORS)
        count = page.evaluate("() => { const e = document.querySelector('.wb-accepted-count'); return e && e.textContent; }")
    except Exception as exc:  # the page itself may be gone
        errors, count = f"(page not readable: {exc})", None
    return f"count label: {count!r}\ncell errors:\n{errors[:4000]}\nserver log:\n{_tail(lab['log'])}"


def test_slider_in_jupyterlab(chromium, browser, smoke_report, lab, tmp_path):
    from workbench.models import data_dir

    plan = _plan(_scores_for_task(data_dir() / "runs" / smoke_report.run_name, TASK))
    context = browser.new_context(viewport={"width": 1500, "height": 1100})
    page = context.new_page()
    start = time.monotonic()

    def phase(name: str) -> None:  # shown by pytest with the output of a failing test (or with -s)
        print(f"[test_browser] {name}: {time.monotonic() - start:.1f} s", flush=True)

    try:
        page.goto(f"{lab['url']}/lab/tree/{lab['notebook']}", wait_until="domcontentloaded", timeout=60_000)
        try:
            page.wait_for_function(KERNEL_IDLE, timeout=90_000, polling=250)
        except Exception:
            pytest.fail(f"the notebook's kernel never became idle\n{_diagnose(page, lab)}", pytrace=False)
        phase("kernel idle")
        page.evaluate(RUN_ALL)
        try:  # slider moves queue behind any cell still running: press keys once every cell has run
            page.wait_for_function(ALL_RUN, timeout=180_000, polling=250)
        except Exception:
            pytest.fail(f"run all cells did not finish within 180 s\n{_diagnose(page, lab)}", pytrace=False)
        errors = page.evaluate(CELL_ERRORS)
        assert not errors, f"a cell failed in JupyterLab:\n{errors[:4000]}"
        phase("all cells run")
        page.evaluate(SHOW_EXPLORER)  # the explorer in view: its sliders and figures are drawn
        initial = _count_text(plan["initial"], plan["n"])
        try:  # every slider starts at its grader's minimum
            page.wait_for_function(COUNT_IS, arg=initial, timeout=30_000, polling=250)
        except Exception:
            pytest.fail(f"the explorer never showed {initial!r}\n{_diagnose(page, lab)}", pytrace=False)
        _check_figures_fit(page)
        phase("figures fit at two widths")

        slider = page.locator(".widget-slider").filter(
            has=page.locator(".widget-label", has_text=re.compile(rf"^\s*{re.escape(plan['grader'])}\s*$")))
        handle = slider.locator(".noUi-handle")
        assert handle.count() == 1, f"expected one slider labelled {plan['grader']!r}"
        handle.focus()
        for _ in range(plan["presses"]):
            page.keyboard.press("ArrowRight")
        # noUiSlider moves one step per key press: the handle's value must be min + presses * step
        value = float(handle.get_attribute("aria-valuetext"))
        assert abs(value - plan["threshold"]) < plan["step"] / 4, (value, plan)

        phase(f"{plan['presses']} key presses")
        expected = _count_text(plan["accepted"], plan["n"])
        try:
            page.wait_for_function(COUNT_IS, arg=expected, timeout=60_000, polling=200)
        except Exception:
            pytest.fail(f"after {plan['presses']} presses on {plan['grader']} the label never showed {expected!r} "
                        f"(plan {plan})\n{_diagnose(page, lab)}", pytrace=False)
        # the threshold line is redrawn with the bars, and only the last key press puts it at plan["threshold"]:
        # once it is there the kernel has handled every press (earlier presses may already give the same count)
        want = plan["histogram_accepted"]
        final = (f"grader => {{ const h = ({HISTOGRAM})(grader); return !!h && h.svg && h.line !== null && "
                 f"Math.abs(h.line - {plan['threshold']!r}) < {plan['step'] / 4!r}; }}")
        try:
            page.wait_for_function(final, arg=plan["grader"], timeout=60_000, polling=200)
        except Exception:
            pytest.fail(f"the {plan['grader']} histogram's threshold line never reached {plan['threshold']}: "
                        f"{page.evaluate(HISTOGRAM, plan['grader'])} (plan {plan})", pytrace=False)
        phase("histogram redrawn")
        shown = page.evaluate(HISTOGRAM, plan["grader"])
        # x: the rows in the accepted trace; binned: the rows its drawn bars count
        assert shown["x"] == want and shown["binned"] == want, (
            f"the {plan['grader']} histogram shows {shown}, expected {want} accepted rows both in the trace and "
            f"in its bars (plan {plan})")
        assert shown["title"].startswith(f"{plan['grader']}: {want} accepted of "), shown
        label = page.locator(".wb-accepted-count").text_content().strip()
        assert label.startswith(expected), (label, plan)
        _lasso_and_exclude(page, data_dir() / "runs" / smoke_report.run_name)
        phase("lasso on the data map, exclude")
    except BaseException:
        try:
            page.screenshot(path=str(tmp_path / "jupyterlab.png"), full_page=True)
            print(f"[test_browser] screenshot: {tmp_path / 'jupyterlab.png'}")
        except Exception:  # the page may be gone: the original error matters
            pass
        raise
    finally:
        context.close()


# ---------------------------------------------------------------------------------------------- offline report
def _plotly_outputs(notebook: Path) -> int:
    cells = json.loads(notebook.read_text())["cells"]
    return sum(PLOTLY_MIME in output.get("data", {}) for cell in cells for output in cell.get("outputs", []))


def _widget_views(notebook: Path) -> list[str]:
    """The model ids of the widget views the notebook's outputs display."""
    from workbench.report import WIDGET_VIEW_MIME

    cells = json.loads(notebook.read_text())["cells"]
    return [output["data"][WIDGET_VIEW_MIME]["model_id"] for cell in cells for output in cell.get("outputs", [])
            if WIDGET_VIEW_MIME in output.get("data", {})]


def _exported_widget_state(executed: Path):
    """The widget state nbconvert writes for a notebook, with this machine's paths replaced as the report does,
    before workbench.report shares the widget code."""
    import nbformat
    from nbconvert import HTMLExporter

    from workbench.report import WIDGET_STATE_TAG, strip_machine_paths

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(executed), as_version=4))
    start = body.find(WIDGET_STATE_TAG)
    if start < 0:
        return None
    return json.loads(strip_machine_paths(body[start + len(WIDGET_STATE_TAG):body.find("</script>", start)]))


# the widget state the manager reads, with each anywidget's `_esm` (a module re-exporting the page's one copy of
# the bundle from a blob URL: workbench.report.RESTORE) replaced by the code that blob holds
STATE_IN_PAGE = """async () => {
    const tag = document.querySelector('script[type="application/vnd.jupyter.widget-state+json"]');
    if (!tag) return null;
    const data = JSON.parse(tag.textContent);
    for (const model of Object.values(data.state)) {
        const esm = model.state && model.state._esm;
        const url = typeof esm === 'string' && (esm.match(/^export \\* from "(blob:[^"]+)"/) || [])[1];
        if (url) model.state._esm = await (await fetch(url)).text();
    }
    return data;
}"""
WIDGET_PLOTS_DRAWN = ("n => { const plots = [...document.querySelectorAll('.widget-subarea .js-plotly-plot')];"
                      " return plots.length >= n && plots.every(p => p.querySelector(':scope svg.main-svg')); }")
PLOTS_DRAWN = ("n => { const plots = [...document.querySelectorAll('.js-plotly-plot')];"
               " return plots.length >= n && plots.every(p => p.querySelector(':scope svg.main-svg')); }")
# what each FigureWidget view drew: its title, every trace's name and point count, and for bar traces (histograms)
# each drawn bar's bin centre and height in pixels, with the y axis' pixels per unit to turn heights into counts
FIGURES = """() => [...document.querySelectorAll('.widget-subarea .js-plotly-plot')].map(plot => ({
    title: String((plot.layout.title && plot.layout.title.text) || plot.layout.title || ''),
    traces: plot._fullData.map(t => ({name: t.name, type: t.type, n: (t.x || t.y || []).length})),
    markers: [...plot.querySelectorAll('.scatterlayer .trace .points path')].length,
    unit: plot._fullLayout.yaxis ? Math.abs(plot._fullLayout.yaxis._m) : null,
    bars: [...plot.querySelectorAll('g.trace.bars')].map(group => ({
        name: group.__data__[0].trace.name,
        bars: [...group.querySelectorAll('g.point')].map(point => ({
            centre: point.__data__.p, count: point.__data__.s, px: point.querySelector('path').getBBox().height}))})),
}))"""
SLIDERS = """() => [...document.querySelectorAll('.widget-subarea .widget-slider')].map(slider => [
    slider.querySelector('.widget-label').textContent.trim(),
    Number(slider.querySelector('.noUi-handle').getAttribute('aria-valuetext'))])"""
WIDGET_TEXT = "() => [...document.querySelectorAll('.widget-subarea')].map(e => e.textContent).join(' ')"


def _reachable(state: dict, roots: list[str]) -> list[str]:
    """The models that views of `roots` draw: the roots and every model their state names (IPY_MODEL_<id>)."""
    seen, todo = [], list(roots)
    while todo:
        model_id = todo.pop()
        if model_id in seen or model_id not in state:
            continue
        seen.append(model_id)
        values = {k: v for k, v in state[model_id]["state"].items() if k != "_esm"}
        todo.extend(re.findall(r"IPY_MODEL_([0-9a-f]+)", json.dumps(values)))
    return seen


def _decoded(model: dict) -> dict:
    """A model's state with its binary buffers (plotly's numpy arrays: {dtype, shape} + base64) as arrays."""
    import base64
    import copy

    state = copy.deepcopy(model["state"])
    for buffer in model.get("buffers", []):
        *path, _ = buffer["path"]
        parent = state
        for key in path[:-1]:
            parent = parent[key]
        spec = parent[path[-1]]
        data = base64.b64decode(buffer["data"]) if buffer.get("encoding") == "base64" else bytes(buffer["data"])
        parent[path[-1]] = np.frombuffer(data, dtype=spec["dtype"]).reshape(spec["shape"])
    return state


PLOTLY_ROUNDING = 1e-9  # plotly.js Lib.findBin: a value within 1e-9 of a bin's width below an edge counts above it


def _bins(values, xbins: dict) -> dict[int, int]:
    """Counts per bin index (left-closed bins of `xbins`), as plotly.js bins a histogram with explicit xbins:
    Lib.findBin's floor((x - start) / size + 1e-9), over the bins its calc makes (edges from start by `size`
    while below end - size / 1e6). The 1e-9 matters: the explorer's largest score sits on a bin edge, where
    (x - start) / size can come out as 29.999999999999996 and plotly draws it in bin 30."""
    x = np.asarray(values, dtype=float)
    index = np.floor((x[np.isfinite(x)] - xbins["start"]) / xbins["size"] + PLOTLY_ROUNDING).astype(int)
    edge, n_bins = float(xbins["start"]), 0
    while edge < xbins["end"] - xbins["size"] / 1e6 and n_bins < 1_000_000:
        edge, n_bins = edge + xbins["size"], n_bins + 1
    index = index[(index >= 0) & (index < n_bins)]
    return {int(k): int(c) for k, c in zip(*np.unique(index, return_counts=True))}


def _text(value: str) -> str:
    """An HTML widget's value as its element's textContent reads, whitespace collapsed."""
    import html as html_lib

    return re.sub(r"\s+", " ", html_lib.unescape(re.sub(r"<[^>]+>", "", value))).strip()


def _check_widgets(page, state: dict, views: list[str], name: str) -> dict:
    """Every widget view of the page drew what its saved state says: sliders at their saved values, the text of
    every HTML widget (the explorer's count label, diversity table, examples), each histogram's bars (bin by bin,
    height in pixels / pixels per count = the saved trace's count), and every other figure's points (the
    training panel's loss curve). Returns what it compared, for the caller's own checks."""
    models = {model_id: state[model_id] for model_id in _reachable(state, views)}
    page.wait_for_function(f"() => document.querySelectorAll('.widget-subarea').length >= {len(views)}",
                           timeout=180_000, polling=200)  # minutes only on a loaded machine
    anys = [_decoded(m) for m in models.values() if m["model_name"] == "AnyModel"]
    page.wait_for_function(WIDGET_PLOTS_DRAWN, arg=len(anys), timeout=180_000, polling=200)
    assert page.locator(".wb-widget-not-saved").count() == 0, f"{name}: a saved widget shows the not-saved note"

    sliders = sorted((m["state"]["description"], m["state"]["value"]) for m in models.values()
                     if m["model_name"] in ("FloatSliderModel", "IntSliderModel"))
    shown = sorted(page.evaluate(SLIDERS))
    assert [label for label, _ in shown] == [label for label, _ in sliders], (name, shown, sliders)
    for (label, value), (_, saved) in zip(shown, sliders):
        assert value == pytest.approx(saved, rel=1e-9, abs=1e-12), f"{name}: slider {label} shows {value}, saved {saved}"

    text = re.sub(r"\s+", " ", page.evaluate(WIDGET_TEXT))
    htmls = [_text(m["state"]["value"]) for m in models.values() if m["model_name"] in ("HTMLModel", "LabelModel")]
    missing = [value for value in htmls if value and value not in text]
    assert not missing, f"{name}: HTML widgets whose saved text is not on the page: {missing}"
    counts = [m["state"]["value"] for m in models.values() if "wb-accepted-count" in str(m["state"].get("value"))]
    if counts:
        label = page.locator(".wb-accepted-count").first.text_content()
        assert re.sub(r"\s+", " ", label).strip() == _text(counts[0]), (name, label, counts)

    figures = page.evaluate(FIGURES)
    assert len(figures) == len(anys), f"{name}: {len(figures)} figure widgets drawn, {len(anys)} saved"
    histograms = 0
    for saved in anys:
        layout = saved["_widget_layout"]
        title = (layout.get("title") or {}).get("text", "") if isinstance(layout.get("title"), dict) else layout.get("title") or ""
        traces = saved["_widget_data"]
        drawn = [f for f in figures if f["title"] == title and [t["name"] for t in f["traces"]] == [t.get("name") for t in traces]]
        assert len(drawn) >= 1, f"{name}: no figure drawn with title {title!r} and traces {[t.get('name') for t in traces]}"
        figure = drawn[0]
        for trace, shown_trace in zip(traces, figure["traces"]):
            assert shown_trace["n"] == len(trace.get("x", trace.get("y", []))), (name, title, shown_trace)
        if all(t.get("type") == "histogram" for t in traces):
            histograms += 1
            bars = {group["name"]: group["bars"] for group in figure["bars"]}
            for trace in traces:
                xbins, expected = trace["xbins"], _bins(trace["x"], trace["xbins"])
                drawn_bars = {int(round((bar["centre"] - xbins["start"]) / xbins["size"] - 0.5)): bar
                              for bar in bars.get(trace["name"], []) if bar["count"]}
                shown_counts = {k: bar["count"] for k, bar in drawn_bars.items()}
                assert shown_counts == expected, (
                    f"{name}: {title!r} {trace['name']} bars (bin: count) {shown_counts} != saved {expected}")
                # and each bar is as tall as its count: plotly puts bar edges on whole pixels, so within 1.5 px
                off = {k: bar["px"] - expected[k] * figure["unit"] for k, bar in drawn_bars.items()}
                assert all(abs(d) <= 1.5 for d in off.values()), f"{name}: {title!r} {trace['name']} bar heights off by {off} px"
        elif any(t.get("mode", "").find("markers") >= 0 and t.get("type") == "scatter" for t in traces):
            assert figure["markers"] == sum(len(t.get("y", [])) for t in traces), (name, title, figure["markers"])
    return {"histograms": histograms, "sliders": len(sliders), "html": len(htmls), "figures": anys,
            "counts": counts}


def _offline_context(browser, **options):
    """A browser context with the network off: every request that is not for a file: URL is aborted and listed."""
    context = browser.new_context(**options)
    context.set_offline(True)
    blocked = []

    def only_files(route):
        if route.request.url.startswith(("file:", "data:", "blob:")):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    return context, blocked


def test_widget_page_draws_offline(chromium, browser, widget_notebook, tmp_path):
    """A small page with a slider, a count label and a FigureWidget histogram (ipywidgets.embed state, as papermill
    saves it) renders from its saved state with the network off: seconds, without the smoke report."""
    import nbformat

    from workbench.report import render_html

    source = tmp_path / "widgets.ipynb"
    nbformat.write(widget_notebook(plotlyjs=True), str(source))
    html = render_html(source, tmp_path / "widgets.html")
    context, blocked = _offline_context(browser, viewport={"width": 1200, "height": 900})
    failed = []
    try:
        page = context.new_page()
        page.on("requestfailed", lambda request: failed.append(request.url))
        page.goto(html.as_uri(), wait_until="load", timeout=60_000)
        state = page.evaluate(STATE_IN_PAGE)["state"]
        seen = _check_widgets(page, state, _widget_views(source), html.name)
        assert seen["histograms"] == 1 and seen["sliders"] == 1 and seen["counts"]
        page.wait_for_function(PLOTS_DRAWN, arg=2, timeout=30_000)  # the static figure as well
        assert page.locator(".wb-accepted-count").text_content().strip() == "4 of 6 accepted"
        assert not blocked and not failed, (blocked, failed)
        page.screenshot(path=str(tmp_path / "widgets.png"), full_page=True)
    finally:
        context.close()


def _check_report(context, html: Path, blocked: list, failed: list, shots: Path) -> tuple[int, dict | None]:
    """Open one rendered report in the offline `context` (see _offline_context): every plotly figure of the
    executed notebook (plotly outputs and figure widgets) draws an svg, the widget state in the page is exactly
    what nbconvert exported (paths replaced), every widget view shows its saved state (_check_widgets; then a
    full-page screenshot goes to `shots`/<name>.png), the file stays under 16 MB and nothing is fetched.
    Returns (the number of figures, what _check_widgets compared or None when the report has no widget view)."""
    executed = html.parent / "executed" / f"{html.stem}.ipynb"
    views = _widget_views(executed)
    exported = _exported_widget_state(executed)
    state = exported["state"] if exported else {}
    n_widget_figures = sum(state[m]["model_name"] == "AnyModel" for m in _reachable(state, views))
    expected = _plotly_outputs(executed) + n_widget_figures
    widgets = None
    page = context.new_page()
    page.on("requestfailed", lambda request: failed.append(request.url))
    try:
        page.goto(html.as_uri(), wait_until="load", timeout=120_000)
        try:  # plotly draws asynchronously: wait until every figure has its svg (~15 s for 03 on 2 idle cores)
            page.wait_for_function(PLOTS_DRAWN, arg=expected, timeout=180_000, polling=200)
        except Exception:
            pass  # the assertion below says what is missing
        drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                              ".map(p => !!p.querySelector(':scope svg.main-svg'))")
        assert drawn == [True] * expected, (f"{html.name}: figures drawn {drawn}, expected {expected} "
                                            f"(plotly outputs and figure widgets in the notebook); blocked {blocked}")
        # each FigureWidget's 4.7 MB plotly bundle is stored once in the file and shared as the page loads:
        # the widget state in the page must be exactly what nbconvert exported (paths replaced)
        assert page.evaluate(STATE_IN_PAGE) == exported, html.name
        if views:
            widgets = _check_widgets(page, exported["state"], views, html.name)
            page.screenshot(path=str(shots / f"{html.stem}.png"), full_page=True)
            print(f"[test_browser] screenshot: {shots / f'{html.stem}.png'}")
        assert html.stat().st_size < 16e6, f"{html.name}: {html.stat().st_size / 1e6:.1f} MB"
        assert not blocked and not failed, f"{html.name} fetched: blocked {blocked}, failed {failed}"
        if widgets is not None and widgets["counts"]:  # the explorer is on screen, not only in the DOM
            label = page.locator(".wb-accepted-count").first
            label.scroll_into_view_if_needed()
            box = label.bounding_box()
            assert label.is_visible() and box and box["width"] > 0 and box["height"] > 0, (html.name, box)
    finally:
        page.close()
    return expected, widgets


def test_report_draws_offline(chromium, browser, smoke_report, tmp_path):
    """Every smoke report opened with the network off: every plotly figure draws, nothing is fetched, and in
    03_thresholds every widget view (explorer, training panel) shows its saved state (screenshot in tmp_path)."""
    context, blocked = _offline_context(browser, viewport={"width": 1400, "height": 1000})
    failed = []
    total, widgets = {}, {}
    try:
        for html in smoke_report.paths:
            total[html.stem], seen = _check_report(context, html, blocked, failed, tmp_path)
            if seen is not None:
                widgets[html.stem] = seen
    finally:
        context.close()
    assert total.get(NOTEBOOK.stem), f"no plotly output in the executed {NOTEBOOK.stem}: {total}"
    # 03: the explorer (a histogram per slider grader, the scatter, the count label) and the training panel's
    # loss plot, whose saved curve has a point per training step
    explorer = widgets.get(NOTEBOOK.stem)
    assert explorer and explorer["histograms"] >= 2 and explorer["sliders"] >= 2 and explorer["counts"], explorer
    loss = [f for f in explorer["figures"] if [t.get("name") for t in f["_widget_data"]] == ["loss"]]
    assert len(loss) == 1 and len(loss[0]["_widget_data"][0]["y"]) >= 1, "the training panel's loss curve was not saved"


def test_demo_report_shows_the_explorer_offline(chromium, browser, demo_smoke, tmp_path):
    """The demo's own reports (`workbench.demo.main(smoke=True)`, made once by the `demo_smoke` fixture that
    tests/test_demo.py checks too) opened with the network off: every figure draws and nothing is fetched, and
    in 03_thresholds the explorer is visible with its saved state: the count label's text, every slider, each
    histogram's bars bin by bin (heights in pixels too). Screenshots: tmp_path/<report>.png."""
    context, blocked = _offline_context(browser, viewport={"width": 1400, "height": 1000})
    failed = []
    widgets = {}
    try:
        for html in demo_smoke.paths:
            _, seen = _check_report(context, html, blocked, failed, tmp_path)
            if seen is not None:
                widgets[html.stem] = seen
    finally:
        context.close()
    explorer = widgets.get(NOTEBOOK.stem)
    assert explorer, f"no widget view in the demo's {NOTEBOOK.stem} report: {[p.name for p in demo_smoke.paths]}"
    assert explorer["counts"] and explorer["histograms"] >= 1 and explorer["sliders"] >= 1, explorer
    assert (tmp_path / f"{NOTEBOOK.stem}.png").stat().st_size > 0
