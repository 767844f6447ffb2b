"""Where the fast engine's time goes: one decode step and one judge (scoring) batch, broken into shares.

    .venv/bin/python benchmarks/profile_engine.py            # 12 configurations; JSON to results/profile_engine.json
    .venv/bin/python benchmarks/profile_engine.py --quick    # 16 slots, 48-token context, 2 steps (smoke run)
    .venv/bin/python benchmarks/profile_engine.py --readme   # the README table again from the saved JSON

The model is the embedded SmolLM2-135M (`load_model("smollm2-135m", dtype=...)`, fp32 unless `--dtype bf16`)
and its `LoadedModel.fast_engine()` (`workbench.engine.LlamaEngine`), with generate's default sampling
(temperature 0.8, top-k 50, top-p 0.95). Configurations: {16, 64, 128} slots (rows) x {48, 192}-token contexts,
for two paths:

decode   one step of the continuous-batching loop (`workbench.batching`), on the scheduler's own state
         (`_Rows`): `common_prefix` (the rows' prompts share all but their last 4 tokens, as chat prompts share
         the template's system turn: one row's prefill, copied into every row as `_Rows.admit` does), `admit` in
         batches of `PREFILL_ROWS`, which draws the first token. A profiled step then runs `_Rows.step`'s body:
         `decode` -> `logits` -> `uniforms` + `sample_tokens` -> `.tolist()` and `record` per row. Positions
         are not advanced, so every step attends over the same span (context + 1) and writes the same cache
         column; the cache holds context + 1 positions (`run_requests` allocates prompt + max_new_tokens, which
         changes only the stride of the cache slices attention reads).
         Tokens per step = slots.
judge    one batch of `workbench.engine.token_logprobs` (the path of `LoadedModel.token_logprobs`, which the
         perplexity grader uses): `slots` sequences of `context` tokens (batch_size = slots), the second half of
         each scored (score_from = context // 2): one `prefill(all_positions=True)` over the full sequences,
         then per row the LM head over its scored positions, `log_softmax` and `gather`. Tokens per step =
         slots x context (every position runs through the layers).

Prompts are random token ids (fixed seed): speed does not depend on the text. Each configuration runs warm-up
steps (not measured), then timed steps without the profiler (the wall time per step reported: the median),
then profiled steps under `torch.profiler` (CPU activities), each step inside a `record_function` scope.
Defaults: decode 2 warm-up, 7 timed, 7 profiled steps; judge 1 warm-up, 3 timed, 3 profiled batches (the
judge's 128 x 192 batch is ~6.6 TFLOP, half a minute here). `--quick`: 1 warm-up, 2 + 2 steps, 16 slots,
48-token context. `--threads N` sets torch's threads (default: torch's).

How profiler events become categories. Every op event's *self* CPU time (its time minus its children's) is
charged to one category, decided by the *outermost* op it sits under (the op Python called: so the `aten::mm`
under `aten::linear` is a matmul, the `aten::softmax`/`aten::bmm` inside `aten::scaled_dot_product_attention`
are attention) and by the step's scopes:

  matmul     outermost op aten::linear, aten::matmul, aten::mm, aten::addmm, aten::bmm, aten::_int_mm,
             mkldnn::_linear_pointwise (the engine's fp32 matmuls): the
             fused QKV, o_proj, fused gate/up, down_proj and the LM head (`engine.logits`)
  attention  aten::scaled_dot_product_attention (QK^T, mask, softmax, V, and any internal GQA expansion) and
             its children; the engine's compiled decode attention (`workbench::decode_attention`, a
             record_function scope around the kernel's call); aten::index_put_ / aten::_index_put_impl_ (the KV-cache writes); aten::repeat_interleave
             and aten::expand (KV head repetition), aten::index_select (cache compaction). `cat` is not here:
             the engine uses it only in the rotary `_rotate` (and for the shared prefix in prefill, which the
             judge path does not use), so it counts as elementwise
  sampling   everything inside the decode step's sampling scope (`uniforms` + `sample_tokens`: temperature
             division, topk, sort, softmax, cumsum, the top-p/min-p masks, searchsorted, gather); outside it,
             outermost ops aten::log_softmax, aten::_log_softmax, aten::softmax, aten::gather, aten::topk,
             aten::sort, aten::cumsum, aten::searchsorted, aten::argmax, aten::multinomial (for the judge this is
             the scoring head: `log_softmax` over the vocabulary and the `gather` of the chosen tokens)
  overhead   Python/framework time: the step's wall time minus every op's time (what the profiler charges to
             no op: Python, dispatch between ops, list/tensor bookkeeping, numpy), plus every other op, the
             small elementwise ones: RMS norms, rotary (mul/cat/neg/index of cos/sin), SiLU, residual adds,
             embedding lookup (aten::index), mask building, dtype casts (aten::to/_to_copy), views; in fp32 with
             the compiled kernels, norms and rotary are `workbench::rms_norm` and `workbench::rotary` scopes, and
             the rotary kernel also writes the step's K and V into the cache (the index_put_ counted as attention
             where torch's ops run)

Shares (the table) are of the median *unprofiled* wall time: matmul, attention and sampling are the medians
of their kernel times under the profiler, overhead the rest (wall - those three), so the profiler's own
per-op cost does not inflate the overhead. The JSON also has the shares of the profiled step (medians per
category, profiler overhead included), the elementwise/untracked split of the overhead, the step's phases
(for decode: layers, lm_head, sampling, bookkeeping scopes, wall ms), the number of outermost op calls per
step (each one a Python -> dispatcher round trip) and the 12 costliest outermost ops.

FLOPs. Matmuls: 2 FLOPs per weight per token through it: every layer's QKV, o, gate/up and down weights
(~106 M) per token through the layers, plus the tied 49k x 576 LM head (~28 M) per token it runs at (decode:
every row; judge: the scored positions only). Achieved matmul GFLOP/s is reported against the wall time
(`matmul_gflops_wall`) and against the matmul kernels' own time (`matmul_gflops_kernel`), each as a share of
this machine's matmul peak (`common.matmul_peak_gflops`, of the chosen dtype: fp32 by default), measured in
this run. Attention FLOPs are reported apart (`attention_gflop`): decode 4 x layers x heads x head_dim x span
per row (QK^T and AV); judge 4 x layers x heads x head_dim x T^2 per sequence, the full masked T x T square
the CPU kernel computes with an explicit mask (the causal half of it is useful).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, emit, machine_info, matmul_peak_gflops, write_readme_block  # noqa: E402

MODEL = "smollm2-135m"
SLOTS = (16, 64, 128)
CONTEXTS = (48, 192)
SAMPLING = dict(temperature=0.8, top_k=50, top_p=0.95, min_p=0.0)  # generate's defaults
OWN_TOKENS = 4          # decode prompts: each row's own tail after the shared start
MIN_SHARED_PREFIX = 8   # Engine.run's min_shared_prefix
CATEGORIES = ("matmul", "attention", "sampling", "overhead")

MATMUL_OPS = {"aten::linear", "aten::matmul", "aten::mm", "aten::addmm", "aten::bmm", "aten::_int_mm",
              "mkldnn::_linear_pointwise"}  # the last: the engine's fp32 matmuls (oneDNN)
ATTENTION_OPS = {"aten::scaled_dot_product_attention", "aten::_scaled_dot_product_flash_attention_for_cpu",
                 "aten::_scaled_dot_product_attention_math", "aten::index_put_", "aten::_index_put_impl_",
                 "aten::repeat_interleave", "aten::expand", "aten::index_select",
                 "workbench::decode_attention"}  # the last: the engine's compiled kernel (workbench/kernels.py)
SAMPLING_OPS = {"aten::log_softmax", "aten::_log_softmax", "aten::softmax", "aten::_softmax", "aten::gather",
                "aten::topk", "aten::sort", "aten::cumsum", "aten::searchsorted", "aten::argmax",
                "aten::multinomial", "workbench::topk", "workbench::token_logprobs"}  # the last two: compiled kernels
SCOPE = "profile::"


def log(*parts) -> None:
    print(f"[profile {time.strftime('%H:%M:%S')}]", *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ workloads

def decode_setup(engine, slots: int, context: int, seed: int):
    """The scheduler's state (`workbench.batching._Rows`) after admitting `slots` prompts of `context` tokens,
    and a function that runs one step of its loop on it (scoped for the profiler)."""
    import numpy as np
    import torch
    from torch.profiler import record_function

    from workbench.batching import PREFILL_ROWS, _Rows
    from workbench.engine import Request
    from workbench.sampler import sample_tokens, uniforms

    g = torch.Generator().manual_seed(seed)
    vocab = engine.embed.shape[0]
    own = min(OWN_TOKENS, context - 1)
    shared = torch.randint(vocab, (context - own,), generator=g).tolist()
    prompts = [shared + torch.randint(vocab, (own,), generator=g).tolist() for _ in range(slots)]
    rows = _Rows(engine, slots, context + 1)  # no stop ids: every step runs all `slots` rows
    requests = [Request(i, prompt, seed + i, 1 << 30) for i, prompt in enumerate(prompts)]

    def sample(hidden, seeds, steps):
        return sample_tokens(engine.logits(hidden), uniforms(seeds, steps), **SAMPLING)
    P, prefix = engine.common_prefix(prompts, MIN_SHARED_PREFIX)
    for start in range(0, slots, PREFILL_ROWS):  # as run_requests' refill()
        rows.admit(requests[start:start + PREFILL_ROWS], P, prefix, sample)
    n = rows.active
    assert n == slots and int(rows.positions[:n].min()) == int(rows.positions[:n].max()) == context, \
        "prompts must fill the context exactly"

    def step() -> None:  # _Rows.step, scoped, with the positions left where they are
        with record_function(SCOPE + "layers"):
            hidden = engine.decode(rows.next_tokens[:n], rows.positions[:n], rows.cache, context + 1)
        with record_function(SCOPE + "lm_head"):
            logits = engine.logits(hidden)
        with record_function(SCOPE + "sampling"):
            steps = np.fromiter((len(g) for g in rows.generated), dtype=np.int64, count=n)
            tokens = sample_tokens(logits, uniforms(rows.seeds[:n], steps), **SAMPLING)
        with record_function(SCOPE + "bookkeeping"):
            rows.next_tokens[:n] = tokens
            for row, token in enumerate(tokens.tolist()):
                rows.record(row, token)

    return step, {"span": context + 1, "prefix_tokens": P}


def judge_setup(engine, slots: int, context: int, seed: int):
    """One batch of `token_logprobs` over `slots` sequences of `context` tokens, the second half scored."""
    import torch

    from workbench.engine import token_logprobs

    g = torch.Generator().manual_seed(seed)
    vocab = engine.embed.shape[0]
    sequences = torch.randint(vocab, (slots, context), generator=g).tolist()
    score_from = [context // 2] * slots

    def step() -> None:
        token_logprobs(engine, sequences, score_from, batch_size=slots)

    return step, {"score_from": context // 2, "scored_tokens": slots * (context - max(context // 2, 1))}


# ------------------------------------------------------------------------------------ profiling

def category(scope: str, outermost: str) -> str:
    if scope == "sampling":
        return "sampling"
    if outermost in MATMUL_OPS:
        return "matmul"
    if outermost in ATTENTION_OPS:
        return "attention"
    if outermost in SAMPLING_OPS:
        return "sampling"
    return "elementwise"


def breakdown(step_event) -> dict:
    """ms per category (self CPU time of the ops under this step), phases and outermost ops, and wall ms."""
    cats: dict = defaultdict(float)
    phases: dict = defaultdict(float)
    ops: dict = defaultdict(float)
    calls = 0
    stack = [(child, "", "") for child in step_event.cpu_children]
    while stack:
        event, scope, outer = stack.pop()
        if event.name.startswith(SCOPE):
            scope = event.name[len(SCOPE):]
            phases[scope] += event.cpu_time_total / 1e3
        else:
            calls += not outer
            outer = outer or event.name
            cats[category(scope, outer)] += event.self_cpu_time_total / 1e3
            ops[outer] += event.self_cpu_time_total / 1e3
        stack.extend((child, scope, outer) for child in event.cpu_children)
    wall = step_event.cpu_time_total / 1e3
    cats["untracked"] = wall - sum(cats.values())
    return {"wall_ms": wall, "cats": dict(cats), "phases": dict(phases), "ops": dict(ops), "calls": calls}


def measure(step, warmup: int, timed: int, profiled: int) -> dict:
    from torch.profiler import ProfilerActivity, profile, record_function

    for _ in range(warmup):
        step()
    walls = []
    for _ in range(timed):
        started = time.perf_counter()
        step()
        walls.append((time.perf_counter() - started) * 1e3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(profiled):
            with record_function(SCOPE + "step"):
                step()
    steps = [breakdown(e) for e in prof.events() if e.name == SCOPE + "step"]
    med = lambda values: statistics.median(values) if values else 0.0  # noqa: E731
    keys = lambda field: sorted({k for s in steps for k in s[field]})  # noqa: E731
    cats = {k: med([s["cats"].get(k, 0.0) for s in steps]) for k in
            ("matmul", "attention", "sampling", "elementwise", "untracked")}
    ops = {k: med([s["ops"].get(k, 0.0) for s in steps]) for k in keys("ops")}
    return {"wall_ms": med(walls), "wall_ms_all": [round(w, 2) for w in walls],
            "profiled_wall_ms": med([s["wall_ms"] for s in steps]), "kernel_ms": cats,
            "phases_ms": {k: med([s["phases"].get(k, 0.0) for s in steps]) for k in keys("phases")},
            "top_ops_ms": dict(sorted(ops.items(), key=lambda kv: -kv[1])[:12]),
            "op_calls": int(med([s["calls"] for s in steps]))}


def shares(m: dict) -> tuple[dict, dict]:
    """(shares of the unprofiled wall, shares of the profiled step), in percent."""
    k = m["kernel_ms"]
    main = {c: k[c] for c in ("matmul", "attention", "sampling")}
    total = sum(main.values())
    wall = max(m["wall_ms"], total)  # the profiler's kernel times can exceed a quick unprofiled step: clamp
    of_wall = {**{c: 100 * v / wall for c, v in main.items()}, "overhead": 100 * (wall - total) / wall}
    profiled = {**main, "overhead": k["elementwise"] + k["untracked"]}
    denom = sum(profiled.values()) or 1.0
    return of_wall, {c: 100 * v / denom for c, v in profiled.items()}


def model_counts(engine) -> dict:
    # from the shapes: a weight may be reordered for oneDNN (bf16), or the gate and up weights a pair (`_GateUp`)
    layer = sum(math.prod(w.shape) for n1, qkv, o, n2, gu, down in engine.layers for w in (qkv, o, gu, down))
    return {"layer_matmul_params": int(layer), "lm_head_params": math.prod(engine.lm_head.shape),
            "layers": len(engine.layers), "heads": engine.n_heads, "kv_heads": engine.n_kv,
            "head_dim": engine.head_dim}


def flops(counts: dict, path: str, slots: int, context: int, extra: dict) -> tuple[float, float, int]:
    """(matmul FLOPs, attention FLOPs, tokens) of one step."""
    attn = 4 * counts["layers"] * counts["heads"] * counts["head_dim"]
    if path == "decode":
        tokens = slots
        matmul = 2 * (counts["layer_matmul_params"] + counts["lm_head_params"]) * slots
        return matmul, attn * extra["span"] * slots, tokens
    tokens = slots * context
    matmul = 2 * counts["layer_matmul_params"] * tokens + 2 * counts["lm_head_params"] * extra["scored_tokens"]
    return matmul, attn * context * context * slots, tokens


def run_config(engine, counts: dict, path: str, slots: int, context: int, args, peak: float) -> dict:
    import torch

    setup = decode_setup if path == "decode" else judge_setup
    started = time.perf_counter()
    with torch.inference_mode():
        step, extra = setup(engine, slots, context, args.seed)
        setup_s = time.perf_counter() - started
        steps = args.steps if path == "decode" else args.judge_steps
        m = measure(step, args.warmup if path == "decode" else min(args.warmup, 1), steps, steps)
    of_wall, of_profiled = shares(m)
    matmul_flops, attention_flops, tokens = flops(counts, path, slots, context, extra)
    wall_s, matmul_s = m["wall_ms"] / 1e3, max(m["kernel_ms"]["matmul"], 1e-6) / 1e3
    r2 = lambda d: {k: round(v, 2) for k, v in d.items()}  # noqa: E731
    result = {"path": path, "slots": slots, "context": context, **extra, "tokens_per_step": tokens,
              "wall_ms": round(m["wall_ms"], 2), "tokens_per_s": round(tokens / wall_s, 1),
              "shares_pct": r2(of_wall),
              "overhead_split_ms": {"elementwise_ops": round(m["kernel_ms"]["elementwise"], 2),
                                    "untracked": round(max(m["wall_ms"] - sum(m["kernel_ms"][c] for c in
                                                       ("matmul", "attention", "sampling", "elementwise")), 0), 2)},
              "kernel_ms": r2(m["kernel_ms"]), "profiled_wall_ms": round(m["profiled_wall_ms"], 2),
              "profiled_shares_pct": r2(of_profiled),
              "profiler_slowdown": round(m["profiled_wall_ms"] / max(m["wall_ms"], 1e-9), 3),
              "op_calls_per_step": m["op_calls"], "phases_ms": r2(m["phases_ms"]), "top_ops_ms": r2(m["top_ops_ms"]),
              "matmul_gflop": round(matmul_flops / 1e9, 3), "attention_gflop": round(attention_flops / 1e9, 3),
              "matmul_gflops_wall": round(matmul_flops / wall_s / 1e9, 2),
              "matmul_gflops_kernel": round(matmul_flops / matmul_s / 1e9, 2),
              "attention_gflops_kernel": round(attention_flops / max(m["kernel_ms"]["attention"], 1e-6) / 1e6, 2),
              "peak_share_wall": round(matmul_flops / wall_s / 1e9 / peak, 4),
              "peak_share_kernel": round(matmul_flops / matmul_s / 1e9 / peak, 4),
              "wall_ms_all": m["wall_ms_all"], "setup_s": round(setup_s, 2)}
    log(f"{path} slots={slots} context={context}: {result['wall_ms']:.1f} ms/step, {result['tokens_per_s']:.0f} tok/s, "
        + ", ".join(f"{c} {v:.0f}%" for c, v in of_wall.items()))
    return result


# ------------------------------------------------------------------------------------ report

def table(result: dict) -> str:
    lines = ["| path | slots | context | ms / step | tokens/s | matmul | attention | sampling | overhead "
             "(of which elementwise ops) | matmul GFLOP/s (wall / in kernels) | share of peak (wall / kernels) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["results"]:
        s = r["shares_pct"]
        elementwise = min(100 * r["overhead_split_ms"]["elementwise_ops"] / max(r["wall_ms"], 1e-9), s["overhead"])
        lines.append(f"| {r['path']} | {r['slots']} | {r['context']} | {r['wall_ms']:.1f} | {r['tokens_per_s']:.0f} | "
                     f"{s['matmul']:.0f}% | {s['attention']:.0f}% | {s['sampling']:.0f}% | "
                     f"{s['overhead']:.0f}% ({elementwise:.0f}%) | {r['matmul_gflops_wall']:.0f} / "
                     f"{r['matmul_gflops_kernel']:.0f} | {100 * r['peak_share_wall']:.0f}% / "
                     f"{100 * r['peak_share_kernel']:.0f}% |")
    m, w = result["machine"], result["workload"]
    lines.append(f"\nMeasured on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['torch_threads']} threads), "
                 f"{result['model']} in {w['dtype']}; matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s "
                 f"({w['dtype']}); medians of {w['steps']} decode / {w['judge_steps']} judge steps after "
                 f"{w['warmup']} (judge: 1) warm-up. decode: one `LlamaEngine.run` step (tokens = slots); judge: one "
                 "`token_logprobs` batch (tokens = slots x context). Categories: see "
                 "`benchmarks/profile_engine.py`.\n")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="16 slots, 48-token context, 2 steps (smoke run)")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--slots", default=None, help="comma-separated slot counts (default 16,64,128)")
    parser.add_argument("--contexts", default=None, help="comma-separated context lengths (default 48,192)")
    parser.add_argument("--paths", default="decode,judge", help="decode, judge or both (default)")
    parser.add_argument("--steps", type=int, default=None, help="timed and profiled decode steps (default 7)")
    parser.add_argument("--judge-steps", type=int, default=None, help="timed and profiled judge batches (default 3)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="decode warm-up steps per config (default 2; quick 1); the judge warms up with 1 batch")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--readme", action="store_true", help="only rewrite the README table from the saved JSON")
    args = parser.parse_args(argv)

    out = RESULTS / ("profile_engine.quick.json" if args.quick else "profile_engine.json")
    if args.readme:
        write_readme_block("profile_engine", table(json.loads((RESULTS / "profile_engine.json").read_text())))
        return 0
    ints = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
    slots = ints(args.slots) if args.slots else ([16] if args.quick else list(SLOTS))
    contexts = ints(args.contexts) if args.contexts else ([48] if args.quick else list(CONTEXTS))
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    if any(p not in ("decode", "judge") for p in paths):
        parser.error("--paths takes decode and/or judge")
    args.steps = args.steps or (2 if args.quick else 7)
    args.judge_steps = args.judge_steps or (2 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)

    import torch

    from workbench.models import load_model

    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    peak = matmul_peak_gflops(dtype=args.dtype)
    log(f"matmul peak ({args.dtype}): {peak:.1f} GFLOP/s")
    lm = load_model(MODEL, dtype=args.dtype)
    engine = lm.fast_engine()
    if engine is None:
        raise SystemExit("the fast engine does not support this model")
    counts = model_counts(engine)
    results = []
    for path in paths:
        for context in contexts:
            for n in slots:
                results.append(run_config(engine, counts, path, n, context, args, peak))
    result = {"benchmark": "profile_engine", "machine": machine_info(), "model": lm.name,
              "matmul_peak_gflops": round(peak, 1),
              "workload": {"dtype": args.dtype, "quick": args.quick, "slots": slots, "contexts": contexts,
                           "paths": paths, "steps": args.steps, "judge_steps": args.judge_steps,
                           "warmup": args.warmup, "sampling": SAMPLING, "seed": args.seed,
                           "torch_threads": torch.get_num_threads()},
              "model_counts": counts, "results": results,
              "seconds": round(time.perf_counter() - started, 1),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    emit(result, "profile_engine", out)
    if not args.quick:
        write_readme_block("profile_engine", table(result))
    print(table(result), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
