"""The README's data-map picture, made from a real run: every generation's samples of one run on one
MiniLM + UMAP layout (`workbench.datamap.generations_map`), drawn with plotly and photographed by Debian's
chromium (playwright, offline: plotly.js is inlined) into a PNG.

    python experiments/data_map_figure.py RUN_FOLDER [--color generation] [--out experiments/results/data_map.png]

RUN_FOLDER: a run with samples in one or more generations (e.g. one arm of experiment 3,
data/runs/experiments/label_free/seed-0/none). Prints what it drew (points, method, seconds) as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHROMIUM = "/usr/bin/chromium"


def photograph(figure, png: Path, width: int = 900, height: int = 560) -> None:
    """The figure as a PNG, rendered by chromium with the network off (every non-file request aborted)."""
    from playwright.sync_api import sync_playwright

    figure.update_layout(width=width, height=height)
    with tempfile.TemporaryDirectory() as folder:
        page_path = Path(folder) / "map.html"
        figure.write_html(str(page_path), include_plotlyjs=True, full_html=True)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                                 args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
            try:
                page = browser.new_page(viewport={"width": width + 20, "height": height + 20})
                page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
                           else route.abort())
                page.goto(page_path.as_uri(), wait_until="load")
                page.wait_for_selector(".js-plotly-plot svg.main-svg", timeout=60_000)
                page.locator(".js-plotly-plot").first.screenshot(path=str(png))
            finally:
                browser.close()


def main(argv=None) -> int:
    from workbench import Run, viz
    from workbench.datamap import generations_map

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="a run folder with samples")
    parser.add_argument("--color", default="generation", help="column to colour by (generation, task)")
    parser.add_argument("--task", default=None, help="map only this task's samples")
    parser.add_argument("--title", default=None)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "data_map.png"))
    args = parser.parse_args(argv)
    started = time.perf_counter()
    run = Run(args.run)
    points = generations_map(run, task=args.task)
    figure = viz.data_map(points, color=args.color, title=args.title)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    photograph(figure, out)
    print(json.dumps({"png": str(out), "points": len(points), "generations": sorted(points["generation"].unique().tolist()),
                      "map": points.attrs["map"], "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
