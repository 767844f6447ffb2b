"""Benchmark: threshold explorer latency, from a slider change to updated figure data (no browser).

Target (issue: threshold explorer): < 100 ms at 10,000 rows, < 1 s at 100,000; at 10,000 rows the data map
tab is shown and recoloured on every move too, and mapping 10,000 samples (MiniLM embeddings + UMAP) takes
< 30 s (issue: sharing and seeing). Prints JSON; writes
benchmarks/results/explorer.json.
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WORKBENCH_PROGRESS", "off")

from bench_metrics import texts_like_samples  # noqa: E402
from common import emit, machine_info  # noqa: E402
from workbench.datamap import project  # noqa: E402
from workbench.embeddings import embed  # noqa: E402
from workbench.widgets import MAP_AT_ONCE_MAX_ROWS, ThresholdExplorer  # noqa: E402


def main(rows_list=(10_000, 100_000), moves: int = 15) -> int:
    results = {}
    for rows in rows_list:
        rng = np.random.default_rng(rows)
        frame = pd.DataFrame({"sample_id": [f"s{i}" for i in range(rows)], "prompt_id": [f"p{i // 4}" for i in range(rows)],
                              "prompt": "q", "completion": texts_like_samples(rows, seed=rows),
                              "score__judge": rng.uniform(size=rows), "score__heuristics": rng.uniform(size=rows),
                              "score__verifier": rng.integers(0, 2, rows).astype(float)})
        mapped = {}
        if rows <= MAP_AT_ONCE_MAX_ROWS:  # the data map: real MiniLM embeddings of the texts, then UMAP
            started = time.perf_counter()
            embeddings = embed(frame["completion"].tolist())
            mapped["embed_seconds"] = round(time.perf_counter() - started, 2)
            layout = project(embeddings, seed=0)
            mapped.update(project_seconds=round(layout.seconds, 2), method=layout.method,
                          map_seconds=round(time.perf_counter() - started, 2), map_target_seconds=30.0)
            mapped["map_meets_target"] = mapped["map_seconds"] < 30.0
        else:
            embeddings = rng.normal(size=(rows, 384)).astype(np.float32)
        started = time.perf_counter()
        explorer = ThresholdExplorer(frame, embeddings=embeddings)
        if "method" in mapped:
            explorer._map = layout  # measured above; the explorer draws the map it would have projected
        explorer.widget  # build the FigureWidgets (and the map tab): the latency includes pushing new data
        build = time.perf_counter() - started
        slider = explorer._ui["sliders"]["judge"]
        timings = []
        for step in range(moves):
            started = time.perf_counter()
            slider.value = 0.2 + 0.6 * step / moves
            timings.append(time.perf_counter() - started)
        target = 0.1 if rows <= 10_000 else 1.0
        results[f"rows_{rows}"] = {"build_seconds": round(build, 2), "median_ms": round(1000 * statistics.median(timings), 1),
                                   "max_ms": round(1000 * max(timings), 1), "target_ms": 1000 * target,
                                   "meets_target": statistics.median(timings) < target,
                                   "accepted_at_end": int(explorer.accepted_mask.sum()),
                                   "data_map_shown": "map" in explorer._ui, **mapped}
    emit({"benchmark": "explorer", "machine": machine_info(), "results": results}, "explorer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
