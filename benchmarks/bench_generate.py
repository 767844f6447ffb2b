"""Benchmark: useful generation throughput with the embedded model (SmolLM2-135M-Instruct) on CPU.

"Useful tokens" are the generated tokens before the end-of-sequence token, summed over rows;
useful_tok_per_s = useful_tokens / seconds of generation (model loading excluded, reported apart).

Configurations (each runs in a fresh subprocess of this script, `--only NAME`, so that its peak RSS
is its own; the parent runs them one after the other and collects one JSON line from each):

  naive_hf_fp32_b32   baseline: HF `model.generate`, fp32, left-padded batches of 32, do_sample
  fast_fp32_b64       workbench.generate.generate, fp32, batch_size 64
  fast_fp32_b128      same, batch_size 128
  fast_int8_b128      same, batch_size 128, quantize="int8"
  llama_cpp           llama-cpp-python on the GGUF, batch 1, first 16 prompts (if installed)
  quality             int8 vs fp32: NLL of held-out corpus passages (HF fp32, engine fp32, engine int8)
                      and greedy-text agreement of generate(quantize=None) vs generate(quantize="int8");
                      attached to results["fast_int8_b128"]["quality"]

Full run (slow: minutes per config on a 2-core CPU):
    .venv/bin/python benchmarks/bench_generate.py
Quick smoke run (24 prompts, 32 new tokens):
    .venv/bin/python benchmarks/bench_generate.py --quick

Prints one JSON object to stdout and writes it to benchmarks/results/generate.json
(quick runs: benchmarks/results/generate.quick.json, so they never overwrite a real result).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine_info  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
MODEL = "smollm2-135m"
TARGET_TOK_PER_S = 400
RSS_LIMIT_GB = 2.5

GEN_CONFIGS = {
    # name: (kind, batch_size, quantize)
    "naive_hf_fp32_b32": ("hf", 32, None),
    "fast_fp32_b64": ("fast", 64, None),
    "fast_fp32_b128": ("fast", 128, None),
    "fast_int8_b128": ("fast", 128, "int8"),
}
ALL_CONFIGS = [*GEN_CONFIGS, "llama_cpp", "quality"]
BASELINE = "naive_hf_fp32_b32"
QUALITY_OF = "fast_int8_b128"


def log(*parts) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    # Linux reports ru_maxrss in KiB (macOS in bytes)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


# ------------------------------------------------------------------------------------ workloads

def instruction_prompts(n: int):
    from workbench.tasks import get_task

    return get_task("instructions", n=n)


def sampling(args) -> dict:
    return dict(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)


def run_naive_hf(args, batch_size: int) -> dict:
    """Plain HF generate in fp32 on left-padded chat-templated batches."""
    import torch

    from workbench.sampling import encode_prompt, stop_token_ids
    from workbench.models import load_model

    started = time.perf_counter()
    lm = load_model(MODEL, dtype="fp32")
    load_s = time.perf_counter() - started
    tok, model = lm.tokenizer, lm.model
    stops = stop_token_ids(tok, model)
    stop_set = set(stops)
    pad = tok.pad_token_id
    prompts = list(instruction_prompts(args.prompts)["prompt"])
    encoded = [encode_prompt(tok, text, True, None) for text in prompts]
    params = sampling(args)
    do_sample = params["temperature"] > 0
    gen_kwargs = dict(do_sample=True, **params) if do_sample else dict(do_sample=False)

    useful, stopped, rows = 0, 0, 0
    n_batches = (len(encoded) + batch_size - 1) // batch_size
    started = time.perf_counter()
    for b, start in enumerate(range(0, len(encoded), batch_size)):
        batch = encoded[start:start + batch_size]
        width = max(len(ids) for ids in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(batch):
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        torch.manual_seed(args.seed + b)
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=args.max_new_tokens,
                                 pad_token_id=pad, eos_token_id=stops, **gen_kwargs)
        batch_useful = 0
        for row in range(len(batch)):
            tokens = out[row, width:].tolist()
            cut = next((i for i, t in enumerate(tokens) if t in stop_set), None)
            n = cut if cut is not None else min(len(tokens), args.max_new_tokens)
            batch_useful += n
            stopped += cut is not None
            rows += 1
        useful += batch_useful
        elapsed = time.perf_counter() - started
        log(f"{BASELINE}: batch {b + 1}/{n_batches}, {rows} rows, {useful} useful tokens, "
            f"{useful / max(elapsed, 1e-9):.1f} tok/s")
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "load_seconds": round(load_s, 3), "useful_tokens": int(useful),
            "samples": rows, "stop_fraction": round(stopped / max(rows, 1), 4), "batch_size": batch_size,
            "dtype": lm.dtype, "quantize": None, "engine": "hf.generate"}


def run_fast(args, batch_size: int, quantize: str | None) -> dict:
    from workbench.sampling import generate
    from workbench.models import load_model

    started = time.perf_counter()
    lm = load_model(MODEL, dtype="fp32")
    load_s = time.perf_counter() - started
    prompts = instruction_prompts(args.prompts)
    started = time.perf_counter()
    samples = generate(prompts, model=lm, batch_size=batch_size, max_new_tokens=args.max_new_tokens,
                       seed=args.seed, quantize=quantize, **sampling(args))
    seconds = time.perf_counter() - started
    return {"seconds": round(seconds, 3), "load_seconds": round(load_s, 3),
            "useful_tokens": int(samples["n_completion_tokens"].sum()), "samples": int(len(samples)),
            "stop_fraction": round(float((samples["finish_reason"] == "stop").mean()), 4),
            "batch_size": batch_size, "dtype": lm.dtype, "quantize": quantize,
            "engine": str(samples["engine"].iloc[0]) if len(samples) else None}


def run_llama_cpp(args) -> dict:
    try:
        import llama_cpp
    except ImportError:
        return {"status": "not installed"}
    ggufs = sorted(glob.glob(str(REPO / "data" / "models" / MODEL / "gguf" / "*.gguf")))
    if not ggufs:
        return {"status": "no gguf file found"}
    n = min(args.llama_cpp_prompts, args.prompts)
    prompts = list(instruction_prompts(args.prompts)["prompt"])[:n]
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=ggufs[0], n_ctx=2048, n_threads=os.cpu_count(), seed=args.seed, verbose=False)
    load_s = time.perf_counter() - started
    useful, stopped = 0, 0
    started = time.perf_counter()
    for i, text in enumerate(prompts):
        out = llm.create_chat_completion(messages=[{"role": "user", "content": text}],
                                         max_tokens=args.max_new_tokens, **sampling(args))
        useful += int(out["usage"]["completion_tokens"])
        stopped += out["choices"][0].get("finish_reason") == "stop"
        log(f"llama_cpp: {i + 1}/{n} prompts, {useful} tokens")
    seconds = time.perf_counter() - started
    return {"status": "ok", "seconds": round(seconds, 3), "load_seconds": round(load_s, 3),
            "useful_tokens": useful, "samples": n, "stop_fraction": round(stopped / max(n, 1), 4),
            "batch_size": 1, "gguf": os.path.relpath(ggufs[0], REPO), "llama_cpp_version": llama_cpp.__version__,
            "comparable": False, "note": f"batch 1 on the first {n} prompts: a different workload"}


# ------------------------------------------------------------------------------------ quality

def engine_all_logits(engine, tokens):
    """Per-position logits [B, T, V] from a LlamaEngine, and how far its last position is from
    the engine's own last-position prefill (a consistency check; 0 expected)."""
    import torch

    with torch.inference_mode():
        lengths = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long)
        hidden = engine.prefill(tokens, lengths, all_positions=True)
        last = engine.prefill(tokens, lengths)
        drift = float((hidden[:, -1].float() - last.float()).abs().max())
        return engine.logits(hidden), drift


def nll_check(args, lm) -> dict:
    import torch
    import torch.nn.functional as F

    from workbench.engine import LlamaEngine
    from workbench.tasks import get_task

    passages = get_task("corpus", n=args.quality_passages, split="heldout")
    texts = [f"{p} {r}".strip() for p, r in zip(passages["prompt"], passages["reference"])]
    engines = {"engine_fp32": LlamaEngine(lm.model, quantize=None),
               "engine_int8": LlamaEngine(lm.model, quantize="int8")}
    totals = {"hf_fp32": 0.0, "engine_fp32": 0.0, "engine_int8": 0.0}
    agree = {"engine_fp32": 0, "engine_int8": 0}
    drift = {"engine_fp32": 0.0, "engine_int8": 0.0}
    n_tokens = 0
    for text in texts:
        ids = lm.tokenizer(text, add_special_tokens=True)["input_ids"]
        tokens = torch.tensor([ids])
        target = tokens[0, 1:]
        with torch.inference_mode():
            ref_logits = lm.model(input_ids=tokens).logits[0, :-1].float()
        totals["hf_fp32"] += float(F.cross_entropy(ref_logits, target, reduction="sum"))
        ref_top = ref_logits.argmax(-1)
        for name, engine in engines.items():
            logits, d = engine_all_logits(engine, tokens)
            logits = logits[0, :-1].float()
            totals[name] += float(F.cross_entropy(logits, target, reduction="sum"))
            agree[name] += int((logits.argmax(-1) == ref_top).sum())
            drift[name] = max(drift[name], d)
        n_tokens += len(ids) - 1
    mean = {k: v / max(n_tokens, 1) for k, v in totals.items()}
    return {"passages": len(texts), "scored_tokens": n_tokens,
            "mean_nll_hf_fp32": round(mean["hf_fp32"], 5),
            "mean_nll_engine_fp32": round(mean["engine_fp32"], 5),
            "mean_nll_engine_int8": round(mean["engine_int8"], 5),
            "nll_delta_int8_vs_fp32": round(mean["engine_int8"] - mean["hf_fp32"], 5),
            "nll_rel_delta_int8_vs_fp32": round((mean["engine_int8"] - mean["hf_fp32"]) / max(mean["hf_fp32"], 1e-9), 5),
            "ppl_hf_fp32": round(float(torch.exp(torch.tensor(mean["hf_fp32"]))), 4),
            "ppl_engine_int8": round(float(torch.exp(torch.tensor(mean["engine_int8"]))), 4),
            "top1_agreement_int8_vs_hf_fp32": round(agree["engine_int8"] / max(n_tokens, 1), 5),
            "top1_agreement_engine_fp32_vs_hf_fp32": round(agree["engine_fp32"] / max(n_tokens, 1), 5),
            "helper_vs_prefill_max_abs_diff": {k: float(f"{v:.3g}") for k, v in drift.items()},
            "note": "raw text prompt+' '+reference, add_special_tokens=True, tokens 1..T-1 scored, token-weighted"}


def greedy_check(args, lm) -> dict:
    from workbench.sampling import generate

    prompts = instruction_prompts(args.greedy_prompts)
    common = dict(model=lm, temperature=0.0, max_new_tokens=args.greedy_tokens, batch_size=args.greedy_prompts,
                  seed=args.seed)
    fp32 = generate(prompts, quantize=None, **common)
    int8 = generate(prompts, quantize="int8", **common)
    tok = lm.tokenizer
    same, token_agree, prefix = 0, [], []
    for a, b in zip(fp32["completion"], int8["completion"]):
        same += a == b
        ta = tok(a, add_special_tokens=False)["input_ids"]
        tb = tok(b, add_special_tokens=False)["input_ids"]
        longest = max(len(ta), len(tb), 1)
        token_agree.append(sum(x == y for x, y in zip(ta, tb)) / longest)
        p = 0
        while p < min(len(ta), len(tb)) and ta[p] == tb[p]:
            p += 1
        prefix.append(p / longest if (ta or tb) else 1.0)
    n = len(token_agree)
    return {"prompts": n, "max_new_tokens": args.greedy_tokens,
            "identical_fraction": round(same / max(n, 1), 4),
            "mean_token_agreement": round(sum(token_agree) / max(n, 1), 4),
            "mean_common_prefix_fraction": round(sum(prefix) / max(n, 1), 4),
            "note": "completions re-tokenized from text; position-wise agreement over the longer of the two"}


def run_quality(args) -> dict:
    from workbench.models import load_model

    lm = load_model(MODEL, dtype="fp32")
    out: dict = {"compares": f"{QUALITY_OF} (engine int8) vs fp32"}
    started = time.perf_counter()
    if args.quality_mode in ("nll", "both"):
        try:
            out["nll"] = nll_check(args, lm)
        except Exception as exc:  # engine internals changed: fall back to greedy agreement
            out["nll"] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            log(f"quality: NLL check failed ({exc}); falling back to greedy agreement")
            if args.quality_mode == "nll":
                args.quality_mode = "both"
        log(f"quality: nll done in {time.perf_counter() - started:.1f}s")
    if args.quality_mode in ("greedy", "both"):
        out["greedy"] = greedy_check(args, lm)
        log(f"quality: greedy agreement done in {time.perf_counter() - started:.1f}s")
    out["seconds"] = round(time.perf_counter() - started, 3)
    return out


def run_child(args) -> dict:
    name = args.only
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    log(f"{name}: starting (pid {os.getpid()}, torch threads {torch.get_num_threads()})")
    if name in GEN_CONFIGS:
        kind, batch_size, quantize = GEN_CONFIGS[name]
        result = run_naive_hf(args, batch_size) if kind == "hf" else run_fast(args, batch_size, quantize)
    elif name == "llama_cpp":
        result = run_llama_cpp(args)
    elif name == "quality":
        result = run_quality(args)
    else:
        raise SystemExit(f"unknown config {name!r}; choose from {ALL_CONFIGS}")
    if "useful_tokens" in result and "seconds" in result:
        result["useful_tok_per_s"] = round(result["useful_tokens"] / max(result["seconds"], 1e-9), 2)
    result["peak_rss_mb"] = peak_rss_mb()
    log(f"{name}: done: " + ", ".join(f"{k}={result[k]}" for k in
                                      ("seconds", "useful_tokens", "useful_tok_per_s", "peak_rss_mb") if k in result))
    return result


# ------------------------------------------------------------------------------------ parent

def child_command(args, name: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--only", name, "--prompts", str(args.prompts),
           "--max-new-tokens", str(args.max_new_tokens), "--temperature", str(args.temperature),
           "--top-p", str(args.top_p), "--top-k", str(args.top_k), "--seed", str(args.seed),
           "--quality-passages", str(args.quality_passages), "--quality-mode", args.quality_mode,
           "--greedy-prompts", str(args.greedy_prompts), "--greedy-tokens", str(args.greedy_tokens),
           "--llama-cpp-prompts", str(args.llama_cpp_prompts)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    return cmd


def run_in_subprocess(args, name: str) -> dict:
    """Run one config as `--only NAME`; stream its stderr; parse the last JSON line of its stdout."""
    started = time.perf_counter()
    proc = subprocess.Popen(child_command(args, name), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=str(REPO))
    tail: deque[str] = deque(maxlen=20)

    def pump():
        for line in proc.stderr:
            tail.append(line.rstrip())
            sys.stderr.write(line)
            sys.stderr.flush()

    pumper = threading.Thread(target=pump, daemon=True)
    pumper.start()
    stdout = proc.stdout.read()
    proc.wait()
    pumper.join(timeout=5)
    wall = round(time.perf_counter() - started, 3)
    lines = [line for line in stdout.splitlines() if line.strip().startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit code {proc.returncode}", "stderr_tail": list(tail)[-8:], "wall_seconds": wall}
    result = json.loads(lines[-1])
    result["wall_seconds"] = wall
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=None, help="instruction prompts (default 256; --quick: 24)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="completion budget (default 128; --quick: 32)")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--configs", default=",".join(ALL_CONFIGS),
                        help=f"comma-separated subset of {','.join(ALL_CONFIGS)} (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 24 prompts, 32 new tokens, small quality check")
    parser.add_argument("--quality-mode", choices=["nll", "greedy", "both"], default="both",
                        help="int8-vs-fp32 check: held-out NLL, greedy-text agreement, or both (default)")
    parser.add_argument("--quality-passages", type=int, default=20)
    parser.add_argument("--greedy-prompts", type=int, default=None, help="default 32; --quick: 8")
    parser.add_argument("--greedy-tokens", type=int, default=None, help="default 64; --quick: 16")
    parser.add_argument("--llama-cpp-prompts", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="torch threads in each child (default: torch's)")
    parser.add_argument("--out", default=None,
                        help="result file (default benchmarks/results/generate.json; --quick: generate.quick.json)")
    parser.add_argument("--only", default=None, help=argparse.SUPPRESS)  # internal: run one config, print JSON
    args = parser.parse_args(argv)

    args.prompts = args.prompts or (24 if args.quick else 256)
    args.max_new_tokens = args.max_new_tokens or (32 if args.quick else 128)
    args.greedy_prompts = args.greedy_prompts or (8 if args.quick else 32)
    args.greedy_tokens = args.greedy_tokens or (16 if args.quick else 64)

    if args.only:
        print(json.dumps(run_child(args)), flush=True)
        return 0

    configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in configs if c not in ALL_CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}; choose from {ALL_CONFIGS}")

    workload = {"model": MODEL, "task": "instructions", "prompts": args.prompts, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "seed": args.seed,
                "chat_template": True, "quick": args.quick, "configs": configs,
                "quality": {"mode": args.quality_mode, "heldout_passages": args.quality_passages,
                            "greedy_prompts": args.greedy_prompts, "greedy_tokens": args.greedy_tokens},
                "llama_cpp_prompts": args.llama_cpp_prompts,
                "useful_tokens": "generated tokens before end-of-sequence, summed over rows",
                "timing": "generation only (model load reported as load_seconds); each config in a fresh subprocess"}
    log(f"workload: {args.prompts} prompts x {args.max_new_tokens} new tokens; configs: {', '.join(configs)}")

    results: dict = {}
    quality = None
    for i, name in enumerate(configs):
        log(f"[{i + 1}/{len(configs)}] {name}")
        result = run_in_subprocess(args, name)
        if name == "quality":
            quality = result
            continue
        if name == "llama_cpp" and result.get("status") == "not installed":
            result = {"status": "not installed"}
        results[name] = result

    base = results.get(BASELINE, {}).get("useful_tok_per_s")
    for name, r in results.items():
        if "useful_tok_per_s" in r:
            r["ratio_to_naive"] = round(r["useful_tok_per_s"] / base, 3) if base else None
            r["within_rss_limit"] = r["peak_rss_mb"] <= RSS_LIMIT_GB * 1024
    if quality is not None:
        if QUALITY_OF in results:
            results[QUALITY_OF]["quality"] = quality
        else:
            results["quality"] = quality

    comparable = {n: r for n, r in results.items() if "useful_tok_per_s" in r and r.get("comparable", True)}
    best = max(comparable, key=lambda n: comparable[n]["useful_tok_per_s"]) if comparable else None
    report = {"benchmark": "generate", "machine": machine_info(), "workload": workload, "results": results,
              "target_useful_tok_per_s": TARGET_TOK_PER_S, "best": best,
              "meets_target": bool(best and comparable[best]["useful_tok_per_s"] >= TARGET_TOK_PER_S
                                   and comparable[best]["within_rss_limit"]),
              "rss_limit_gb": RSS_LIMIT_GB,
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    text = json.dumps(report, indent=2)
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / (
        "generate.quick.json" if args.quick else "generate.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    log(f"wrote {out}")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
