"""A real JupyterLab in a real browser: open 03_thresholds, run all cells, move a slider with the
keyboard, and wait for the accepted count and the histogram to show what the test computes itself.
Then open a rendered HTML report offline and check that every plotly figure drew.

Needs Debian's chromium at /usr/bin/chromium (`make test` installs it) and the `playwright` package
(driven with executable_path; `playwright install` is never run).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from workbench import Run

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    assert Path(CHROMIUM).exists(), "Debian chromium is missing: run `make test` (it installs it with apt)"
    data = tmp_path_factory.mktemp("data")
    run = Run(data / "runs" / "browser")
    rng = np.random.default_rng(5)
    n = 60
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(n)], "prompt_id": [f"p{i}" for i in range(n)],
                            "prompt": [f"What is {i} + 1?" for i in range(n)], "task": "arithmetic",
                            "completion": [f"The answer is {i + rng.integers(0, 2)}." for i in range(n)],
                            "reference": [str(i + 1) for i in range(n)], "finish_reason": "stop",
                            "n_completion_tokens": 6})
    run.append("samples", samples)
    judge = np.round(rng.uniform(size=n), 3)
    run.append("scores/judge", pd.DataFrame({"sample_id": samples["sample_id"], "score": judge}))
    notebooks = tmp_path_factory.mktemp("notebooks")
    import papermill

    papermill.execute_notebook(str(ROOT / "notebooks" / "03_thresholds.ipynb"), str(notebooks / "03_thresholds.ipynb"),
                               parameters={"run_name": "browser", "task": "arithmetic"}, prepare_only=True)
    port = _free_port()
    env = dict(os.environ, WORKBENCH_DATA=str(data), WORKBENCH_PROGRESS="off")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
         "--ServerApp.token=", "--ServerApp.password=", "--ServerApp.allow_root=True",
         "--ServerApp.disable_check_xsrf=True", "--LabApp.expose_app_in_browser=True",
         f"--ServerApp.root_dir={notebooks}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert server.poll() is None, server.stderr.read().decode()[-2000:]
            time.sleep(0.5)
    yield {"url": f"http://127.0.0.1:{port}", "judge": judge}
    server.terminate()
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.kill()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield instance
        instance.close()


def test_slider_in_jupyterlab(lab, browser, tmp_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{lab['url']}/lab/tree/03_thresholds.ipynb")
    page.wait_for_function("window.jupyterapp && document.querySelector('.jp-Notebook')", timeout=90_000)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=90_000)
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    count = page.wait_for_selector(".wb-accepted-count", timeout=180_000)
    judge = lab["judge"]
    assert count.inner_text().startswith(f"{len(judge)} of {len(judge)}")  # slider starts at the minimum
    handle = page.locator(".widget-slider .noUi-handle").first
    handle.focus()
    presses = 40
    for _ in range(presses):
        page.keyboard.press("ArrowRight")
    # independently: the slider moves one step (range / 200) per key press from the minimum
    low, high = float(judge.min()), float(judge.max())
    step = (high - low) / 200
    threshold = low + presses * step
    expected = int((judge >= threshold - 1e-9).sum())
    page.wait_for_function(
        "n => document.querySelector('.wb-accepted-count').innerText.startsWith(n + ' of')", arg=expected,
        timeout=30_000)
    page.wait_for_function(
        "n => [...document.querySelectorAll('.gtitle')].some(t => t.textContent.startsWith('judge: ' + n + ' accepted'))",
        arg=expected, timeout=30_000)
    page.screenshot(path=str(tmp_path / "lab.png"), full_page=True)
    page.close()


def test_report_renders_offline(browser, tmp_path, real_model_dir):
    from workbench.report import render_html

    # a small executed notebook with figures: 03 on a tiny graded run is enough to check rendering
    data = tmp_path / "data"
    run = Run(data / "runs" / "offline")
    rng = np.random.default_rng(1)
    samples = pd.DataFrame({"sample_id": [f"s{i}" for i in range(30)], "prompt_id": [f"p{i}" for i in range(30)],
                            "prompt": "q", "task": "instructions", "completion": [f"text {i} w{i % 7}" for i in range(30)],
                            "finish_reason": "stop", "n_completion_tokens": 3})
    run.append("samples", samples)
    for grader in ("judge", "heuristics"):
        run.append(f"scores/{grader}", pd.DataFrame({"sample_id": samples["sample_id"], "score": rng.uniform(size=30)}))
    import papermill

    executed = tmp_path / "03.ipynb"
    old = os.environ.get("WORKBENCH_DATA")
    os.environ["WORKBENCH_DATA"] = str(data)
    try:
        papermill.execute_notebook(str(ROOT / "notebooks" / "03_thresholds.ipynb"), str(executed),
                                   parameters={"run_name": "offline", "task": "instructions"}, kernel_name="python3",
                                   progress_bar=False, cwd=str(ROOT / "notebooks"))
    finally:
        if old is None:
            os.environ.pop("WORKBENCH_DATA")
        else:
            os.environ["WORKBENCH_DATA"] = old
    html = render_html(executed, tmp_path / "03.html")
    notebook = json.loads(executed.read_text())
    figures = sum("application/vnd.plotly.v1+json" in o.get("data", {}) for c in notebook["cells"]
                  for o in c.get("outputs", []))
    assert figures >= 1
    context = browser.new_context()
    context.set_offline(True)
    context.route("http*://**", lambda route: route.abort())  # nothing but the file itself
    page = context.new_page()
    page.goto(html.as_uri())
    page.wait_for_function(f"document.querySelectorAll('.js-plotly-plot .main-svg').length >= {figures}",
                           timeout=60_000)
    drawn = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')].filter(p => p.querySelector('.main-svg')).length")
    assert drawn >= figures
    assert page.evaluate("typeof window.Plotly") == "object"
    context.close()
