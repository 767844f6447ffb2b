"""A real JupyterLab in a real browser, and the HTML report in a browser with the network off.

1. JupyterLab serves a copy of notebooks/03_thresholds.ipynb whose parameters point at the session's smoke
   run (the one tests/test_notebooks.py checks, made once by the `smoke_report` fixture). Debian's chromium,
   driven by playwright, runs all cells, moves one threshold slider with the keyboard and waits until the
   accepted-count label and that grader's histogram show what this test computes itself from the run's
   parquet files with pandas/numpy.
2. The rendered HTML reports are opened offline (every non-file request aborted): every plotly output of
   the executed notebooks must draw an svg.

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


def _exported_widget_state(executed: Path):
    """The widget state nbconvert writes for a notebook, before workbench.report shares the widget code."""
    import nbformat
    from nbconvert import HTMLExporter

    from workbench.report import WIDGET_STATE_TAG

    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nbformat.read(str(executed), as_version=4))
    start = body.find(WIDGET_STATE_TAG)
    return None if start < 0 else json.loads(body[start + len(WIDGET_STATE_TAG):body.find("</script>", start)])


STATE_IN_PAGE = ("() => { const tag = document.querySelector('script[type=\"application/vnd.jupyter.widget-state+json\"]');"
                 " return tag ? JSON.parse(tag.textContent) : null; }")


def test_report_draws_offline(chromium, browser, smoke_report):
    context = browser.new_context()
    context.set_offline(True)
    blocked = []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    total = {}
    try:
        for html in smoke_report.paths:
            expected = _plotly_outputs(smoke_report.out / "executed" / f"{html.stem}.ipynb")
            total[html.stem] = expected
            page = context.new_page()
            page.goto(html.as_uri(), wait_until="load", timeout=60_000)
            try:  # plotly draws asynchronously: wait until every figure has its svg
                page.wait_for_function(f"() => {{ const plots = [...document.querySelectorAll('.js-plotly-plot')];"
                                       f" return plots.length >= {expected} && plots.every(p => p.querySelector("
                                       f"':scope svg.main-svg')); }}", timeout=60_000, polling=200)
            except Exception:
                pass  # the assertion below says what is missing
            drawn = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')]"
                                  ".map(p => !!p.querySelector(':scope svg.main-svg'))")
            assert drawn == [True] * expected, (f"{html.name}: figures drawn {drawn}, expected {expected} "
                                                f"(plotly outputs in the notebook); blocked requests {blocked}")
            # each FigureWidget's 4.7 MB plotly bundle is stored once in the file and put back as the page
            # loads: the widget state in the page must be exactly what nbconvert exported
            executed = smoke_report.out / "executed" / f"{html.stem}.ipynb"
            assert page.evaluate(STATE_IN_PAGE) == _exported_widget_state(executed), html.name
            assert html.stat().st_size < 16e6, f"{html.name}: {html.stat().st_size / 1e6:.1f} MB"
            page.close()
    finally:
        context.close()
    assert total.get(NOTEBOOK.stem), f"no plotly output in the executed {NOTEBOOK.stem}: {total}"
