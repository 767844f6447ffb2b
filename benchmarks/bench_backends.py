"""Benchmark: useful tokens/s of the same 256 prompts through every generation backend, in one run.

  embedded        workbench.generate on the transformers model (fast engine, continuous batching, batch 64)
  llamacpp        in-process llama-cpp-python on the embedded GGUF (Q4_1), one request at a time
  server_c1       llama-cpp-python's OpenAI-compatible server through the openai backend, concurrency 1
  server_c4       the same server, 4 requests in flight

Useful tokens = completion tokens before the end of turn, summed over rows; seconds exclude loading the
model and starting the server (one warm-up request each). Every config samples the same prompts with
the same settings (arithmetic, 256 problems, T=0.8, max 48 new tokens, seed 0) and must return 256 rows
with the shared schema. Ratios are against the embedded backend.

    .venv/bin/python benchmarks/bench_backends.py            # ~5 min on a 2-core CPU; needs `make llamacpp`
    .venv/bin/python benchmarks/bench_backends.py --quick    # 32 prompts

Prints JSON and writes benchmarks/results/backends.json (quick: backends.quick.json).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, emit, machine_info  # noqa: E402


def timed(prompts, model, settings: dict) -> dict:
    from workbench import generate

    generate(prompts.head(1), model=model, **{**settings, "max_new_tokens": 4})  # warm-up (and model check)
    started = time.perf_counter()
    samples = generate(prompts, model=model, **settings)
    seconds = time.perf_counter() - started
    useful = int(samples["n_completion_tokens"].sum())
    return {"rows": len(samples), "useful_tokens": useful, "seconds": round(seconds, 2),
            "useful_tok_per_s": round(useful / seconds, 1),
            "stopped_share": round(float((samples["finish_reason"] == "stop").mean()), 3),
            "columns": list(samples.columns)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="32 prompts instead of 256")
    args = parser.parse_args()

    from workbench.backends.llamacpp import LlamaServer
    from workbench.models import load_model
    from workbench.tasks import get_task

    prompts = get_task("arithmetic", n=32 if args.quick else 256)
    settings = dict(temperature=0.8, max_new_tokens=48, seed=0)
    threads = os.cpu_count()
    results = {}
    print("embedded ...", file=sys.stderr)
    results["embedded"] = timed(prompts, load_model("smollm2-135m"), {**settings, "batch_size": 64})
    print("llamacpp ...", file=sys.stderr)
    results["llamacpp"] = timed(prompts, f"llamacpp:smollm2-135m?n_threads={threads}", settings)
    with LlamaServer("smollm2-135m", n_threads=threads) as server:
        for concurrency in (1, 4):
            print(f"server concurrency {concurrency} ...", file=sys.stderr)
            results[f"server_c{concurrency}"] = timed(
                prompts, f"openai:{server.alias}@{server.url}?concurrency={concurrency}", settings)
    columns = results["embedded"]["columns"]
    for result in results.values():
        result["same_schema_as_embedded"] = result.pop("columns") == columns
    base = results["embedded"]["useful_tok_per_s"]
    emit({"benchmark": "backends", "prompts": len(prompts), "settings": settings, "results": results,
          "ratio_to_embedded": {name: round(r["useful_tok_per_s"] / base, 3) for name, r in results.items()},
          "machine": machine_info(), "llama_cpp_threads": threads},
         "backends", RESULTS / ("backends.quick.json" if args.quick else "backends.json"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
