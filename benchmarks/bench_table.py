"""The bench's table (`benchmarks/bench.py`): each row's rates, ratio to naive, shares of the matmul peak, matmul-only
ceiling and target, and the markdown the README shows. Kept apart from bench.py, which runs the workloads."""
from __future__ import annotations

# (share of the matmul peak, x naive) per row; fine-tuning: bench_train.py's target (tokens/s, peak RSS MB)
TARGETS = {"generate_short": (0.45, 4.0), "generate_long": (0.45, 4.0), "judge": (0.50, 3.0),
           "perplexity": (0.50, 3.0)}
FINETUNE_TARGET = (300, 4000)


def label(name: str, sizes: dict) -> str:
    size = sizes[name]
    if name.startswith("generate"):
        return f"generate: {size[0]} prompts x {size[1]} new tokens"
    return {"judge": f"self-judge: {size} items", "perplexity": f"perplexity: {size} held-out passages",
            "finetune": f"fine-tune (full SFT): {size} steps of 8 x 128 tokens"}[name]


def make_row(name: str, ours: dict, naive: dict, peak: float, sizes: dict, bandwidth: float | None = None,
             fp32_peak: float | None = None) -> dict:
    """A table row: the two sides' rates, their ratio and shares of the peak, the target and whether it is met. The
    targets are the issue's, stated against the fp32 matmul peak: a bf16 table passes `fp32_peak` (measured in the
    same run) and is judged against it (its share of its own, bf16 peak is shown too); an fp32 table, its own."""
    row = {"workload": label(name, sizes), "ours": ours, "naive": naive}
    if "error" in ours or "error" in naive:
        return {**row, "met": None, "target": "-"}
    if not isinstance(peak, dict):  # a table saved before the peaks were measured per library
        peak = {"best": peak}
    flops_per_token = (6 if name == "finetune" else 2) * ours["parameters"]
    share = lambda side, library="best": round(flops_per_token * side["tok_per_s"] / 1e9 / peak[library], 4)  # noqa: E731
    row.update(tok_per_s_ours=ours["tok_per_s"], tok_per_s_naive=naive["tok_per_s"],
               ratio=round(ours["tok_per_s"] / max(naive["tok_per_s"], 1e-9), 2), share_of_peak=share(ours),
               share_of_peak_naive=share(naive), peak_rss_mb_ours=ours["peak_rss_mb"],
               share_of_torch_peak=share(ours, "torch") if "torch" in peak else None,
               peak_rss_mb_naive=naive["peak_rss_mb"])
    if name == "finetune":
        rate, rss = FINETUNE_TARGET
        row["target"] = f">= {rate} tok/s, peak RSS <= {rss / 1000:g} GB (bench_train.py)"
        row["met"] = ours["tok_per_s"] >= rate and ours["peak_rss_mb"] <= rss
    else:
        min_share, min_ratio = TARGETS[name]
        row["target"] = f">= {100 * min_share:.0f}% of peak, >= {min_ratio:g}x naive"
        # the judge's prefill efficiency is the share of the work it did (its shared prefix counted once)
        if "work_gflop" in ours:
            row["share_of_peak_work"] = round(ours["work_gflop"] / ours["seconds"] / peak["best"], 4)
        efficiency = row.get("share_of_peak_work", row["share_of_peak"])   # of the table's own peak
        to_fp32 = peak["best"] / fp32_peak if fp32_peak else 1.0  # the measure: a share of the fp32 peak
        if fp32_peak:
            row["share_of_fp32_peak"] = round(efficiency * to_fp32, 4)
        row["met"] = efficiency * to_fp32 >= min_share and row["ratio"] >= min_ratio
        if ours.get("matmul_seconds"):  # the same share had only the matmuls taken time (matmul_ceiling.py)
            row["matmul_share_of_wall"] = round(ours["matmul_seconds"] / ours["seconds"], 3)
            row["ceiling_share"] = round(efficiency * ours["seconds"] / ours["matmul_seconds"], 4)
            floor = ours["matmul_seconds"]
            if ours.get("kv_read_gb") and bandwidth:  # ... and attention had only read its KV cache from memory
                floor += ours["kv_read_gb"] / bandwidth
                row["ceiling_share_with_kv"] = round(efficiency * ours["seconds"] / floor, 4)
            # the ratio to naive at that floor, and whether a target lies beyond what the floor allows
            row["ratio_ceiling"] = round(row["ratio"] * ours["seconds"] / floor, 2)
            row["beyond_ceiling"] = (min_ratio > row["ratio_ceiling"] or
                                     min_share > to_fp32 * row.get("ceiling_share_with_kv", row["ceiling_share"]))
    for key in ("mean_score", "perplexity"):  # the two sides computed the same thing
        if key in ours:
            row[f"{key}_ours_naive"] = [ours[key], naive[key]]
    return row


def _peaks_text(table: dict) -> str:
    peaks = table.get("matmul_peaks_gflops", {"best": table["matmul_peak_gflops"]})
    named = ", ".join(f"{library} {peaks[library]:.0f}" for library in ("torch", "onednn") if library in peaks)
    return f"{peaks['best']:.0f} GFLOP/s" + (f" ({named})" if named else "")


def markdown(report: dict) -> str:
    m, lines = report["machine"], []
    for dtype, table in report["tables"].items():
        if table["status"] != "measured":
            lines.append(f"**{dtype}**: {table['status']}.\n")
            continue
        fp32_peak = (f"; targets against the fp32 peak, {table['fp32_matmul_peak_gflops']:.0f} GFLOP/s"
                     if table.get("fp32_matmul_peak_gflops") else "")
        lines += [f"**{dtype}** (matmul peak {_peaks_text(table)}, measured in this run{fp32_peak})\n",
                  "| workload | useful tok/s | naive tok/s | x naive | share of peak (of torch.mm's) "
                  "| matmul-only ceiling | peak RSS (ours / naive) | target | met |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in table["rows"].values():
            if "ratio" not in r:
                lines.append(f"| {r['workload']} | error | | | | | | | |")
                continue
            torch_share = f" ({100 * r['share_of_torch_peak']:.0f}%)" if r.get("share_of_torch_peak") else ""
            work = f"; work done: {100 * r['share_of_peak_work']:.0f}%" if "share_of_peak_work" in r else ""
            if "share_of_fp32_peak" in r:
                work += f"; **of the fp32 peak: {100 * r['share_of_fp32_peak']:.0f}%**"
            ceiling = (f"{100 * r['ceiling_share']:.0f}% (matmuls {100 * r['matmul_share_of_wall']:.0f}% of the time)"
                       if "ceiling_share" in r else "-")
            if "ceiling_share_with_kv" in r:
                ceiling += f"; with KV reads: {100 * r['ceiling_share_with_kv']:.0f}%"
            if "ratio_ceiling" in r:
                ceiling += f"; {r['ratio_ceiling']:.1f}x naive"
            first = {side: f" (first pass {r[side]['useful_tokens'] / r[side]['first_pass_seconds']:.0f})"
                     if r[side].get("first_pass_seconds") else "" for side in ("ours", "naive")}
            met = "yes" if r["met"] else "**no**: beyond the ceiling" if r.get("beyond_ceiling") else "**no**"
            lines.append(f"| {r['workload']} | {r['tok_per_s_ours']:.0f}{first['ours']} | "
                         f"{r['tok_per_s_naive']:.0f}{first['naive']} | "
                         f"{r['ratio']:.2f} | {100 * r['share_of_peak']:.0f}%{torch_share}{work} | {ceiling} | "
                         f"{r['peak_rss_mb_ours'] / 1e3:.2f} / {r['peak_rss_mb_naive'] / 1e3:.2f} GB | {r['target']} | "
                         f"{met} |")
        lines.append("")
    peaks = "; ".join(f"{d} {_peaks_text(t)}" for d, t in report["tables"].items() if "rows" in t)
    lines.append(
        "Useful tokens: generated before the stop token (generate), judge-prompt tokens (self-judge), scored tokens "
        "(perplexity), real tokens (fine-tune). Share of peak: FLOPs counted as 2 x parameters x useful tokens "
        "(inference rows; work a pass skips, such as the judge's shared rubric prefix, counts as done; \"work "
        "done\" counts the judge's shared prefix once and its LM head once per item) or "
        "6 x parameters x tokens (fine-tuning), per second, over the machine's matmul peak in the table's dtype: the "
        "faster of torch's own `a @ b` (MKL for fp32) and oneDNN, measured in this run (in brackets: the share of "
        "torch.mm's peak, the measure the issue used). Targets are judged against the fp32 peak (the faster library's), as the issue states "
        "them (in the bf16 table: its share of the fp32 peak measured in the same run, in bold). Matmul-only ceiling: "
        "the share the row would reach if everything but its matmuls took no time: every matmul the engine ran (shape "
        "and count, logged during the timed run) timed alone at its shape, summed (`benchmarks/matmul_ceiling.py`); "
        "in brackets, that sum as a share of the measured time; \"with KV reads\": the attention kernel's reads of the KV "
        "cache (each row up to its furthest query, once per call) at the machine's measured memory read rate, added "
        "to that sum; then the ratio to naive at that floor (a target above it is \"beyond the ceiling\"). The "
        "self-judge and perplexity rows time their second pass in the process, on both sides (in brackets: the "
        "first pass, with the process's start-up costs). Naive: "
        "transformers `generate` (batches of 32) / a plain forward (judge: batches of 32, perplexity: 8) / "
        "bench_train.py's loop; each side in its own process. `benchmarks/bench.py`, JSON in "
        "`benchmarks/results/bench.json`.\n")
    lines.append(f"Measured {report['created_at'][:10]} on {m['cpu']} ({m['cores']} cores, bf16 native: "
                 f"{m['bf16_native']}), torch {m['torch']}, {m['torch_threads']} threads; matmul peaks: {peaks}"
                 + "".join(f"; memory read ({d}) {t['read_bandwidth_gbs']:.0f} GB/s" for d, t in report["tables"].items()
                           if t.get("read_bandwidth_gbs")) + ".\n")
    return "\n".join(lines)
