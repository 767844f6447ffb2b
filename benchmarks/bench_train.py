"""Benchmark: fine-tuning throughput of the embedded model at sequence length ~128.

Real (non-padding) tokens per second and peak RSS for (a) a naive loop (fixed batch of 8 rows padded
to 128, full logits, labels with -100 on the prompt, plain AdamW) and (b) `workbench.train.finetune`
full and LoRA (length buckets, head at target positions only, fused AdamW). Each variant runs in its
own process so its peak RSS is its own. Examples: real passages of the corpus task (32-word prefix,
a continuation of >= 70 words, ~128 tokens). Prints JSON; writes benchmarks/results/train.json.
Target (issue): >= 300 real tokens/s full fine-tune on this machine, peak RSS <= 4 GB.
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
os.environ.setdefault("WORKBENCH_PROGRESS", "off")

STEPS = 6  # optimizer steps timed per variant (after one warm-up step)


def examples():
    import pandas as pd

    from workbench.tasks import get_task
    from workbench.train import real_examples

    frame = real_examples(get_task("corpus", n=None, split="all", prefix_words=32, reference_words=90))
    # long passages only, cut to 128 tokens by max_length: every row is a full-length sequence
    frame = frame[frame["completion"].str.split().str.len() >= 70]
    return pd.concat([frame] * 4, ignore_index=True)  # enough rows that every timed step is a full 8 x 128


def naive(steps: int) -> dict:
    import torch

    from workbench.models import load_model
    from workbench.train import tokenize_examples

    loaded = load_model("smollm2-135m", dtype="fp32")
    model, tokenizer = loaded.model, loaded.tokenizer
    rows = tokenize_examples(examples(), tokenizer, max_length=128)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    real, started = 0, None
    for step in range(steps + 1):
        if step == 1:
            started, real = time.perf_counter(), 0
        batch = rows[step * 8:(step + 1) * 8]
        ids = torch.full((8, 128), tokenizer.pad_token_id)
        labels = torch.full((8, 128), -100)
        mask = torch.zeros((8, 128), dtype=torch.long)
        for r, (tokens, n_prompt) in enumerate(batch):
            ids[r, :len(tokens)] = torch.tensor(tokens)
            labels[r, n_prompt:len(tokens)] = torch.tensor(tokens[n_prompt:])
            mask[r, :len(tokens)] = 1
            real += len(tokens)
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    seconds = time.perf_counter() - started
    import resource

    return {"real_tokens_per_s": real / seconds, "seconds": seconds, "steps": steps,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def workbench(method: str, steps: int) -> dict:
    from workbench.train import finetune

    result = finetune(examples(), config=None, method=method, max_steps=steps + 1, epochs=0,
                      tokens_per_batch=1024, max_length=128)
    timed = result.history.iloc[1:]  # drop the warm-up step
    seconds = float(timed["seconds"].iloc[-1] - result.history["seconds"].iloc[0])
    return {"real_tokens_per_s": float(timed["tokens"].sum()) / seconds, "seconds": seconds, "steps": steps,
            "padding_share": result.stats["padding_share"], "peak_rss_gb": result.stats["peak_rss_gb"],
            "mean_rows_per_step": float(timed["rows"].mean()), "first_loss": result.stats["first_loss"],
            "last_loss": result.stats["last_loss"]}


def main() -> int:
    if len(sys.argv) == 3:  # child process: one variant
        variant, steps = sys.argv[1], int(sys.argv[2])
        out = naive(steps) if variant == "naive" else workbench(variant, steps)
        print("RESULT " + json.dumps(out))
        return 0
    from common import emit, machine_info

    results = {"machine": machine_info(), "sequence_length": 128, "tokens_per_step": 1024}
    for variant in ("naive", "full", "lora"):
        done = subprocess.run([sys.executable, __file__, variant, str(STEPS)], capture_output=True, text=True)
        line = [l for l in done.stdout.splitlines() if l.startswith("RESULT ")]
        if done.returncode or not line:
            raise SystemExit(f"{variant} failed:\n{done.stderr[-3000:]}")
        results[variant] = json.loads(line[0][7:])
    results["full_vs_naive"] = results["full"]["real_tokens_per_s"] / results["naive"]["real_tokens_per_s"]
    results["lora_vs_naive"] = results["lora"]["real_tokens_per_s"] / results["naive"]["real_tokens_per_s"]
    results["target_full_tokens_per_s"] = 300
    emit(results, "train")
    write_readme_table(results)
    return 0


def write_readme_table(results: dict) -> None:
    """The table in README.md between the bench_train markers, from these numbers (never typed by hand)."""
    import re

    labels = {"naive": "naive loop: 8 rows padded to 128, full logits, AdamW", "full": "workbench full fine-tune",
              "lora": "workbench LoRA r=8 (all projections)"}
    lines = ["| variant | real tokens/s | x naive | peak RSS |", "|---|---|---|---|"]
    for key, label in labels.items():
        row = results[key]
        ratio = row["real_tokens_per_s"] / results["naive"]["real_tokens_per_s"]
        lines.append(f"| {label} | {row['real_tokens_per_s']:.0f} | {ratio:.2f} | {row['peak_rss_gb']:.2f} GB |")
    machine = results["machine"]
    lines.append(f"\nMeasured on {machine['cpu']} ({machine['cores']} cores, bf16 native: {machine['bf16_native']}), "
                 f"torch {machine['torch']}, {STEPS} timed steps each.\n")
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    pattern = re.compile(r"(<!-- bench_train:start -->\n).*?(<!-- bench_train:end -->)", re.S)
    readme.write_text(pattern.sub(lambda m: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text))


if __name__ == "__main__":
    raise SystemExit(main())
