"""One benchmark table for the engine's three workloads: generation, judging, fine-tuning (`make bench`).

    .venv/bin/python benchmarks/bench.py --dtype both     # what `make bench` runs: the fp32 and the bf16 table
    .venv/bin/python benchmarks/bench.py                  # the fp32 table only
    .venv/bin/python benchmarks/bench.py --quick          # smoke run: tiny sizes, results/bench.quick.json, no README
    .venv/bin/python benchmarks/bench.py --configs judge,perplexity   # a subset (also --only NAME): bench.partial.json
    .venv/bin/python benchmarks/bench.py --readme         # rows and README block again from results/bench.json

A full run writes benchmarks/results/bench.json and README.md's `<!-- bench:start -->` block; progress goes to
stderr. Rows (the embedded SmolLM2-135M, `load_model("smollm2-135m", dtype=...)`):

  generate_short  128 instruction prompts x 64 new tokens: `workbench.generate(prompts, model=lm, max_new_tokens=64,
                  seed=0)`, everything else at its defaults; naive: transformers `model.generate` on left-padded
                  chat-templated batches of 32, generate's default sampling. Useful tokens: generated before the stop.
  generate_long   256 x 128, the same.
  judge           `SelfJudge(model=lm).score` over 128 items (the instruction task's prompts with their reference
                  answers as the judged samples: the same items in every run, no generation); naive: a transformers
                  forward over the same judge prompts in left-padded batches of 32, next-token logits at the end.
                  Useful tokens: the judge prompts' tokens.
  perplexity      the held-out perplexity path (`workbench.metrics.collapse.heldout_logprobs`, as `evaluate` runs it)
                  over 128 held-out passages of the corpus task; naive: transformers forward + log_softmax on
                  right-padded batches of 8. Useful tokens: the scored tokens.
  finetune        `workbench.train.finetune` (full SFT, 8 x 128-token rows a step) against bench_train.py's naive
                  loop, 6 timed steps after one warm-up; bf16 table: bf16 autocast on both (fp32 master weights).
                  Useful tokens: the real (non-padding) tokens.

Each side (ours, naive) of each row runs in a fresh subprocess (`--only NAME --side ours|naive`, one JSON line
back), so its peak RSS is its own; model loading is outside the timing (reported). Share of peak: FLOPs counted as
2 x parameters x useful tokens (inference) or 6 x parameters x useful tokens (fine-tuning), per second, over this
machine's matmul peak of the table's dtype (`common.matmul_peaks`: the faster of torch's `a @ b` and oneDNN), measured
in the same run (before and after the table's rows; the higher). The bf16 table runs only where the CPU has native bf16 (AMX / AVX512-BF16).
`--quick`: 16 prompts x 16 (short) / 32 (long) tokens, 16 judge items, 16 passages, 2 training steps.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WORKBENCH_PROGRESS", "off")

from common import RESULTS, machine_info, matmul_peaks, read_bandwidth_gbs, write_readme_block  # noqa: E402
from bench_table import make_row, markdown  # noqa: E402
from matmul_ceiling import MatmulLog, replay_seconds  # noqa: E402

MODEL = "smollm2-135m"
CONFIGS = ("generate_short", "generate_long", "judge", "perplexity", "finetune")
FULL = {"generate_short": (128, 64), "generate_long": (256, 128), "judge": 128, "perplexity": 128, "finetune": 6}
QUICK = {"generate_short": (16, 16), "generate_long": (16, 32), "judge": 16, "perplexity": 16, "finetune": 2}
# rows whose timed pass follows an untimed one of the same workload, on both sides. A scoring pass lasts seconds,
# and a fresh process's first one pays start-up costs that the process's later passes do not (ours, bf16, 128 judge
# items: 3.6 s first, 2.8-2.9 s after; with glibc told to keep freed memory, 3.0 s first: most of it is the
# allocator handing fresh pages to the first large activations). A workbench session scores many batches in one
# process, so the warm pass is the one that matters; the first pass is reported beside it (`first_pass_seconds`).
WARM_ROWS = ("judge", "perplexity")
NO_BF16 = "not measured: this CPU has no native bf16"


def log(*parts) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # Linux: KiB


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())  # tied embedding / LM head counted once


# ------------------------------------------------------------------------------------ workloads (one side each)

def generate_row(lm, side: str, n: int, new_tokens: int) -> dict:
    import torch

    from workbench import generate, get_task
    from workbench.engine import left_padded
    from workbench.sampling import stop_token_ids

    prompts = get_task("instructions", n=n)
    if side == "ours":
        lm.fast_engine()  # built once per model, outside the timing
        started = time.perf_counter()
        samples = generate(prompts, model=lm, max_new_tokens=new_tokens, seed=0)
        return {"seconds": time.perf_counter() - started, "useful_tokens": int(samples["n_completion_tokens"].sum()),
                "stop_fraction": round(float((samples["finish_reason"] == "stop").mean()), 3),
                "engine": str(samples["engine"].iloc[0])}
    defaults = inspect.signature(generate).parameters  # the same sampling as generate's defaults
    sampling = {k: defaults[k].default for k in ("temperature", "top_p", "top_k")}
    tok, model = lm.tokenizer, lm.model
    stops = stop_token_ids(tok, model)
    encoded = [lm.encode(text, chat=bool(chat)) for text, chat in zip(prompts["prompt"], prompts["chat"])]
    useful, stopped = 0, 0
    started = time.perf_counter()
    for b, start in enumerate(range(0, len(encoded), 32)):
        ids, mask = left_padded(encoded[start:start + 32], tok.pad_token_id)
        torch.manual_seed(b)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=True,
                                 pad_token_id=tok.pad_token_id, eos_token_id=stops, **sampling)
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in stops), None)
            useful += cut if cut is not None else min(len(row), new_tokens)
            stopped += cut is not None
        log(f"naive generate: {start + len(ids)}/{len(encoded)} prompts, {useful} useful tokens")
    return {"seconds": time.perf_counter() - started, "useful_tokens": useful,
            "stop_fraction": round(stopped / max(len(encoded), 1), 3), "sampling": sampling, "batch_size": 32}


def judge_row(lm, side: str, n: int) -> dict:
    import torch

    from workbench import get_task
    from workbench.engine import left_padded
    from workbench.graders import SelfJudge

    items = get_task("instructions", n=n).rename(columns={"reference": "completion"})
    judge = SelfJudge(model=lm)
    sequences = [judge.prompt_ids(p, c) for p, c in zip(items["prompt"], items["completion"])]
    useful = sum(map(len, sequences))
    if side == "ours":
        lm.fast_engine()
        started = time.perf_counter()
        scores = judge.score(items).to_numpy()
        seconds = time.perf_counter() - started
    else:
        yes, no = judge.candidate_ids()
        out = []
        started = time.perf_counter()
        for start in range(0, len(sequences), 32):
            ids, mask = left_padded(sequences[start:start + 32], lm.tokenizer.pad_token_id)
            with torch.inference_mode():
                logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
            out.append(torch.sigmoid(torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1)))
        seconds = time.perf_counter() - started
        scores = torch.cat(out).numpy()
    result = {"seconds": seconds, "useful_tokens": useful, "items": len(sequences),
              "mean_score": round(float(scores.mean()), 5)}
    if side == "ours":  # the work actually done: the shared start once, each item's rest, the LM head per item
        from workbench.engine import _common_prefix_length

        prefix = _common_prefix_length(sequences)
        prefix = prefix if prefix >= 8 else 0  # run_requests' / common_prefix's minimum
        embedding = lm.model.get_input_embeddings().weight.numel()
        layers = n_params(lm.model) - embedding
        result["work_gflop"] = round((2 * layers * (prefix + useful - prefix * len(sequences))
                                      + 2 * embedding * len(sequences)) / 1e9, 2)
        result["shared_prefix_tokens"] = prefix
    return result


def perplexity_row(lm, side: str, n: int, max_length: int = 256) -> dict:
    import math

    import torch

    from workbench import get_task
    from workbench.metrics.collapse import heldout_logprobs, pooled_perplexity

    passages = get_task("corpus", n=n, split="heldout")
    texts = (passages["prompt"] + " " + passages["reference"]).tolist()
    if side == "ours":
        lm.fast_engine()
        started = time.perf_counter()
        scored = heldout_logprobs(lm, texts, max_length=max_length)
        seconds = time.perf_counter() - started
        useful, ppl = sum(len(lp) for _, lp in scored), pooled_perplexity(scored)
    else:  # the same tokens as heldout_logprobs (no special tokens, cut to max_length), a plain forward per batch
        sequences = [lm.tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
        useful, nll = 0, 0.0
        started = time.perf_counter()
        for start in range(0, len(sequences), 8):
            batch = sequences[start:start + 8]
            ids = torch.full((len(batch), max(map(len, batch))), lm.tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, seq in enumerate(batch):
                ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
            with torch.inference_mode():
                logp = torch.log_softmax(lm.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
                chosen = logp.gather(-1, ids[:, 1:, None])[..., 0] * mask[:, 1:]
            nll -= float(chosen.sum())
            useful += int(mask[:, 1:].sum())
        seconds = time.perf_counter() - started
        ppl = math.exp(nll / max(useful, 1))
    return {"seconds": seconds, "useful_tokens": int(useful), "passages": len(texts), "perplexity": round(ppl, 4)}


def finetune_row(side: str, dtype: str, steps: int) -> dict:
    import torch

    import bench_train

    from workbench.train import finetune

    if side == "naive":  # bench_train's naive loop (fp32 weights, plain AdamW), under bf16 autocast in the bf16 table
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            out = bench_train.naive(steps)
        return {"seconds": out["seconds"], "useful_tokens": round(out["real_tokens_per_s"] * out["seconds"]),
                "steps": steps, "precision": "bf16-autocast" if dtype == "bf16" else "fp32"}
    result = finetune(bench_train.examples(), method="full", max_steps=steps + 1, epochs=0, tokens_per_batch=1024,
                      max_length=128, precision=dtype)
    history = result.history
    return {"seconds": float(history["seconds"].iloc[-1] - history["seconds"].iloc[0]),  # the first step: warm-up
            "useful_tokens": int(history["tokens"].iloc[1:].sum()), "steps": steps, "parameters": n_params(result.model),
            "precision": result.stats["precision"], "last_loss": round(float(history["loss"].iloc[-1]), 4)}


def run_child(args) -> dict:
    import torch

    from workbench.models import load_model

    sizes = QUICK if args.quick else FULL
    name, size = args.only, sizes[args.only]
    log(f"{name} ({args.side}, {args.dtype}): starting, pid {os.getpid()}, {torch.get_num_threads()} threads")
    if name == "finetune":
        result = finetune_row(args.side, args.dtype, size)
    else:
        started = time.perf_counter()
        lm = load_model(MODEL, dtype=args.dtype)
        load_s = time.perf_counter() - started
        row = generate_row if name.startswith("generate") else judge_row if name == "judge" else perplexity_row
        first_pass = None
        if name in WARM_ROWS:  # the same pass once, untimed: the timed one is then a warm process's
            first_pass = row(lm, args.side, size)["seconds"]
        with MatmulLog() as matmuls:  # ours only runs through the engine's matmuls; the naive side logs nothing
            result = row(lm, args.side, *size) if name.startswith("generate") else row(lm, args.side, size)
        result.update(load_seconds=round(load_s, 2), parameters=n_params(lm.model), dtype=lm.dtype)
        if first_pass is not None:
            result["first_pass_seconds"] = round(first_pass, 3)
        if args.side == "ours":  # the matmul-only floor of what it just ran (matmul_ceiling.py), after the timing
            result.update(matmul_seconds=round(replay_seconds(matmuls.shapes, lm.model.dtype), 3),
                          matmul_gflop=round(matmuls.flops / 1e9, 1), matmul_shapes=len(matmuls.shapes),
                          kv_read_gb=round(matmuls.kv_bytes / 1e9, 3))
    result["seconds"] = round(result["seconds"], 3)
    result["tok_per_s"] = round(result["useful_tokens"] / max(result["seconds"], 1e-9), 2)
    result["peak_rss_mb"] = peak_rss_mb()
    log(f"{name} ({args.side}, {args.dtype}): {result['useful_tokens']} tokens in {result['seconds']} s = "
        f"{result['tok_per_s']} tok/s, peak RSS {result['peak_rss_mb']} MB")
    return result


# ------------------------------------------------------------------------------------ parent

def run_side(args, name: str, side: str, dtype: str) -> dict:
    """One side of one row in a fresh process; its stderr streams through, its last JSON line comes back."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--side", side, "--dtype", dtype]
    done = subprocess.run(cmd + (["--quick"] if args.quick else []), stdout=subprocess.PIPE, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode or not lines:
        log(f"{name} ({side}, {dtype}) failed: exit code {done.returncode}")
        return {"error": f"exit code {done.returncode}"}
    return json.loads(lines[-1])


def run_table(args, dtype: str, configs: list[str], sizes: dict) -> dict:
    before, bandwidth = matmul_peaks(dtype=dtype), read_bandwidth_gbs()
    fp32_before = matmul_peaks(dtype="fp32") if dtype != "fp32" else None  # the targets' yardstick
    log(f"{dtype}: matmul peaks {before}, memory read {bandwidth:.1f} GB/s" + (f", fp32 {fp32_before}" if fp32_before else ""))
    sides = {}
    for i, name in enumerate(configs):
        log(f"{dtype} [{i + 1}/{len(configs)}] {name}")
        sides[name] = {side: run_side(args, name, side, dtype) for side in ("ours", "naive")}
    after = matmul_peaks(dtype=dtype)
    bandwidth = round(max(bandwidth, read_bandwidth_gbs()), 1)
    peaks = {library: round(max(before[library], after[library]), 1) for library in before}
    log(f"{dtype}: matmul peaks {after} after the rows; using {peaks}, memory read {bandwidth} GB/s")
    table = {"status": "measured", "matmul_peak_gflops": peaks["best"], "matmul_peaks_gflops": peaks,
             "matmul_peaks_before_after": [before, after], "read_bandwidth_gbs": bandwidth}
    if fp32_before:
        fp32_after = matmul_peaks(dtype="fp32")
        table["fp32_matmul_peak_gflops"] = round(max(fp32_before["best"], fp32_after["best"]), 1)
        table["fp32_matmul_peaks_before_after"] = [fp32_before, fp32_after]
    table["rows"] = {name: make_row(name, s["ours"], s["naive"], peaks, sizes, bandwidth,
                                    table.get("fp32_matmul_peak_gflops")) for name, s in sides.items()}
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "both"], default="fp32")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; writes bench.quick.json, not the README")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated subset of {','.join(CONFIGS)}")
    parser.add_argument("--only", default=None, help="one row (as --configs NAME); with --side: that side, here")
    parser.add_argument("--side", choices=["ours", "naive"], default=None, help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--readme", action="store_true", help="rebuild the rows and README block from bench.json")
    args = parser.parse_args(argv)
    if args.readme:
        report = json.loads((RESULTS / "bench.json").read_text())
        for table in report["tables"].values():
            for name, row in table.get("rows", {}).items():
                table["rows"][name] = make_row(name, row["ours"], row["naive"],
                                               table.get("matmul_peaks_gflops", table["matmul_peak_gflops"]),
                                               report["sizes"], table.get("read_bandwidth_gbs"),
                                               table.get("fp32_matmul_peak_gflops"))
        (RESULTS / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        write_readme_block("bench", markdown(report))
        print(markdown(report))
        return 0
    if args.side:
        if args.only not in CONFIGS or args.dtype == "both":
            parser.error("--side needs --only NAME and --dtype fp32 or bf16")
        print(json.dumps(run_child(args)), flush=True)
        return 0

    configs = [args.only] if args.only else [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {', '.join(CONFIGS)}")
    subset = set(configs) != set(CONFIGS)
    sizes = QUICK if args.quick else FULL
    machine = machine_info()
    started = time.perf_counter()
    tables = {}
    for dtype in ("fp32", "bf16"):
        if args.dtype not in (dtype, "both"):
            tables[dtype] = {"status": f"not run: --dtype {args.dtype}"}
        elif dtype == "bf16" and not machine["bf16_native"]:
            tables[dtype] = {"status": NO_BF16}
        else:
            tables[dtype] = run_table(args, dtype, configs, sizes)
    report = {"benchmark": "bench", "machine": machine, "model": MODEL, "quick": args.quick, "configs": configs,
              "sizes": {c: sizes[c] for c in configs}, "tables": tables,
              "flops": "2 x parameters x useful tokens (inference), 6 x parameters x useful tokens (fine-tuning)",
              "seconds": round(time.perf_counter() - started, 1),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    name = "bench" + (".quick" if args.quick else "") + (".partial" if subset else "") + ".json"
    out = RESULTS / name
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {out} ({report['seconds']} s)")
    text = markdown(report)
    if not args.quick and not subset:
        write_readme_block("bench", text)
        log("README.md's bench block rewritten")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
