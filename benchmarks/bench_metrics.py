"""Benchmark: the diversity report on 10,000 texts, and live re-selection (a slider move) at 10k and 100k rows.

Prints one JSON object (machine + numbers) and writes benchmarks/results/metrics.json.
Targets (issue: graders/metrics): report < 10 s at 10,000 texts of ~50 tokens; re-selection < 50 ms at
10,000 rows and < 500 ms at 100,000 rows.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info  # noqa: E402
from workbench.live import LiveSelection  # noqa: E402
from workbench.metrics import diversity_report  # noqa: E402
from workbench.tasks import get_task  # noqa: E402


def texts_like_samples(n: int, seed: int = 0) -> list[str]:
    """~50-token texts cut from the real corpus with random offsets (realistic n-gram statistics)."""
    corpus = get_task("corpus", n=None, split="all", prefix_words=8, reference_words=200)
    words = " ".join(corpus["prompt"] + " " + corpus["reference"]).split()
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(words) - 60, size=n)
    return [" ".join(words[s:s + int(rng.integers(25, 45))]) for s in starts]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    results = {}

    texts = texts_like_samples(10_000)
    embeddings = np.random.default_rng(0).normal(size=(10_000, 384)).astype(np.float32)
    started = time.perf_counter()
    report = diversity_report(texts, embeddings=embeddings)
    results["diversity_report_10k"] = {"seconds": round(time.perf_counter() - started, 3), "target_seconds": 10,
                                       "mean_words": round(report["mean_words"], 1)}

    for rows in args.rows:
        texts = texts_like_samples(rows, seed=rows)
        rng = np.random.default_rng(rows)
        frame = pd.DataFrame({"completion": texts, "score__judge": rng.uniform(size=rows),
                              "score__verifier": rng.integers(0, 2, rows).astype(float)})
        started = time.perf_counter()
        live = LiveSelection(frame, embeddings=rng.normal(size=(rows, 384)).astype(np.float32))
        build = time.perf_counter() - started
        live.update({"judge": 0.5})
        timings = []
        for step in range(args.repeats):  # a slider being dragged: one threshold, small moves
            threshold = 0.3 + 0.4 * step / args.repeats
            started = time.perf_counter()
            summary = live.update({"judge": threshold, "verifier": 0.0})
            timings.append(time.perf_counter() - started)
        target = 0.05 if rows <= 10_000 else 0.5
        results[f"reselect_{rows}"] = {
            "cache_build_seconds": round(build, 2), "median_ms": round(1000 * statistics.median(timings), 1),
            "max_ms": round(1000 * max(timings), 1), "target_ms": 1000 * target,
            "meets_target": statistics.median(timings) < target, "last_accept_rate": round(summary["accept_rate"], 3)}
    emit({"benchmark": "metrics", "machine": machine_info(), "results": results}, "metrics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
