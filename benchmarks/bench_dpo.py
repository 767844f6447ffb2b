"""DPO's speed and memory on this machine, beside SFT at the same sequence length, in one run.

    python benchmarks/bench_dpo.py            # ~5 min on 2 cores; JSON to benchmarks/results/dpo.json
    python benchmarks/bench_dpo.py --readme   # the README table again from that JSON

Every variant trains the embedded model (SmolLM2-135M-Instruct) through `workbench.train.finetune` in its own
fresh process (so each peak RSS is its own), on the same synthetic data: 64-token prompts with 64-token
answers, i.e. 128-token sequences. DPO (TRL's DPOTrainer) takes 8 pairs per optimizer step = 16 sequences
(chosen + rejected) = 2048 real tokens; SFT takes the same 16 sequences' worth (2048 tokens per step).
Real tokens/s counts non-padding tokens (DPO: chosen + rejected sequences, prompt included; SFT: the whole
sequence), timed after 2 warm-up steps. The share of the machine's matmul peak (measured here on square
1024 x 1024 and 2048 x 2048 matmuls (the faster), fp32 and bf16; the bf16 one is the ceiling where training runs under bf16 autocast) uses the model's FLOPs per token: a forward pass costs 2 x 134.5 M (every weight,
embedding-tied LM head included: TRL computes full logits), a backward 4 x that for full training; so full
DPO ~ 8 x N per token (policy forward + backward, reference forward), LoRA DPO ~ 6 x N (no weight gradients
for the frozen base, ~2 x N for activation gradients, the reference forward through the same network with its
adapters off), SFT ~ 6 x N (an upper bound for ours, which runs the head at answer positions only).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import emit, machine_info, matmul_peak_gflops, write_readme_block  # noqa: E402

PARAMS = 134.5e6  # SmolLM2-135M: every weight, the tied 49k x 576 embedding/LM head included
FLOPS_PER_TOKEN = {"sft_full": 6 * PARAMS, "dpo_full": 8 * PARAMS, "dpo_lora": 6 * PARAMS}
WARMUP_STEPS, TIMED_STEPS, PAIRS_PER_STEP, HALF = 2, 6, 8, 64


def _pairs():
    """(pairs frame, SFT examples) of 64-token prompts and 64-token answers, plain text (no chat template:
    exact lengths), the same texts for both."""
    import pandas as pd

    from workbench.models import load_model

    tokenizer = load_model("smollm2-135m", dtype="fp32").tokenizer
    words = " ".join(f"word{i}" for i in range(400))
    ids = tokenizer(words, add_special_tokens=False)["input_ids"]
    rows = []
    n = PAIRS_PER_STEP * (WARMUP_STEPS + TIMED_STEPS)
    for i in range(n):
        start = (7 * i) % (len(ids) - 3 * HALF)
        prompt, chosen, rejected = (tokenizer.decode(ids[start + k * HALF: start + (k + 1) * HALF]) for k in range(3))
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "chat": False})
    pairs = pd.DataFrame(rows)
    sft = pd.DataFrame({"prompt": list(pairs["prompt"]) * 2, "completion": list(pairs["chosen"]) + list(pairs["rejected"]),
                        "chat": False, "finish_reason": "length"})
    return pairs, sft


def run_variant(variant: str) -> dict:
    """One variant in this process: train WARMUP + TIMED steps, time the last TIMED."""
    from workbench.train import finetune

    pairs, sft = _pairs()
    events = []
    started = time.perf_counter()
    if variant == "sft_full":
        result = finetune(sft, "smollm2-135m", tokens_per_batch=2 * PAIRS_PER_STEP * 2 * HALF, micro_batch_tokens=512,
                          max_length=2 * HALF + 8, epochs=1, callback=events.append)
    else:
        result = finetune(pairs, "smollm2-135m", method="dpo", lora=variant == "dpo_lora", epochs=1,
                          pairs_per_step=PAIRS_PER_STEP, pairs_per_micro_batch=2, max_length=2 * HALF + 8,
                          callback=events.append)
    timed = events[WARMUP_STEPS:]
    seconds = timed[-1]["seconds"] - events[WARMUP_STEPS - 1]["seconds"]
    tokens = sum(e["tokens"] for e in timed)
    return {"variant": variant, "steps": len(events), "timed_steps": len(timed), "timed_tokens": tokens,
            "timed_seconds": seconds, "real_tokens_per_s": tokens / seconds, "tokens_per_step": tokens / len(timed),
            "peak_rss_gb": result.stats["peak_rss_gb"], "wall_seconds": time.perf_counter() - started,
            "last_loss": result.stats["last_loss"], "reward_margin": result.stats.get("reward_margin"),
            "precision": result.stats["precision"]}


def main() -> int:
    peak, peak_bf16 = matmul_peak_gflops(), matmul_peak_gflops(dtype="bf16")
    results = {}
    for variant in ("sft_full", "dpo_full", "dpo_lora"):
        done = subprocess.run([sys.executable, __file__, variant], capture_output=True, text=True,
                              env={**os.environ, "WORKBENCH_PROGRESS": "off"})
        if done.returncode:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        achieved = result["real_tokens_per_s"] * FLOPS_PER_TOKEN[variant] / 1e9  # GFLOP/s
        result["achieved_gflops"] = achieved
        result["matmul_share_fp32"] = achieved / peak
        # under bf16 autocast (a CPU with native bf16) the matmuls run in bf16: that is the ceiling that applies
        result["matmul_share"] = achieved / (peak_bf16 if result["precision"] == "bf16-autocast" else peak)
        results[variant] = result
    sft = results["sft_full"]["real_tokens_per_s"]
    for variant in ("dpo_full", "dpo_lora"):
        results[variant]["tokens_per_s_vs_sft"] = results[variant]["real_tokens_per_s"] / sft
    emit(result := {"benchmark": "dpo", "machine": machine_info(), "matmul_peak_gflops_fp32": peak,
          "matmul_peak_gflops_bf16": peak_bf16,
          "sequence_length": 2 * HALF, "pairs_per_step": PAIRS_PER_STEP, "warmup_steps": WARMUP_STEPS,
          "flops_per_token": FLOPS_PER_TOKEN, "results": results,
          "dpo_full_peak_rss_within_6gb": results["dpo_full"]["peak_rss_gb"] <= 6.0}, "dpo")
    write_readme_table(result)
    return 0


def write_readme_table(result: dict) -> None:
    """The table in README.md between the bench_dpo markers, from the measured numbers (never typed)."""
    labels = {"sft_full": "SFT, full (`finetune`)", "dpo_full": "DPO, full (TRL `DPOTrainer`)",
              "dpo_lora": "DPO, LoRA r=8"}
    lines = ["| variant | real tokens/s | x SFT | share of matmul peak | peak RSS |", "|---|---|---|---|---|"]
    sft = result["results"]["sft_full"]["real_tokens_per_s"]
    for key, label in labels.items():
        row = result["results"][key]
        lines.append(f"| {label} | {row['real_tokens_per_s']:.0f} | {row['real_tokens_per_s'] / sft:.2f} | "
                     f"{100 * row['matmul_share']:.0f}% | {row['peak_rss_gb']:.2f} GB |")
    machine = result["machine"]
    lines.append(f"\nMeasured on {machine['cpu']} ({machine['cores']} cores, bf16 native: {machine['bf16_native']}; "
                 f"training ran under {result['results']['sft_full']['precision']}), torch {machine['torch']}; "
                 f"matmul peak {result['matmul_peak_gflops_fp32']:.0f} GFLOP/s fp32, "
                 f"{result['matmul_peak_gflops_bf16']:.0f} bf16 (the share is of the bf16 one under bf16 autocast); "
                 f"{result['sequence_length']}-token sequences, {result['pairs_per_step']} pairs (16 sequences) per "
                 f"step, {result['results']['sft_full']['timed_steps']} timed steps each, each variant in a fresh "
                 "process.\n")
    write_readme_block("bench_dpo", "\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1:] == ["--readme"]:
        write_readme_table(json.loads((Path(__file__).resolve().parent / "results" / "dpo.json").read_text()))
    elif len(sys.argv) > 1:
        print(json.dumps(run_variant(sys.argv[1])))
    else:
        raise SystemExit(main())
