"""Benchmark: self-judge items per second on the embedded model (items of ~100 tokens: rubric + sample).

Compares a naive transformers forward over the full prompts (batch 32) with the workbench's SelfJudge
(shared rubric prefix computed once, logits only at the last position), in fp32 and with int8 matmuls,
and reports how often int8 flips the judge's decision at 0.5 against fp32. Prints JSON; writes
benchmarks/results/judge.json. Target (issue): >= 30 items/s.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("WORKBENCH_PROGRESS", "off")

from common import emit, machine_info  # noqa: E402
from workbench.engine import left_padded  # noqa: E402
from workbench.generation import generate  # noqa: E402
from workbench.graders import SelfJudge  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.tasks import get_task  # noqa: E402


def main(n_items: int = 128) -> int:
    import torch

    model = load_model("smollm2-135m", dtype="fp32")
    samples = generate(get_task("instructions", n=n_items), model=model, max_new_tokens=40, seed=0, batch_size=64)
    judge = SelfJudge(model=model)
    sequences = [judge.prompt_ids(p, c) for p, c in zip(samples["prompt"], samples["completion"])]
    results = {"items": n_items, "mean_item_tokens": float(np.mean([len(s) for s in sequences]))}

    started = time.perf_counter()  # naive: a full forward per batch, left padded
    yes, no = judge.candidate_ids()
    naive = []
    for start in range(0, len(sequences), 32):
        batch = sequences[start:start + 32]
        ids, mask = left_padded(batch, model.tokenizer.pad_token_id)
        with torch.inference_mode():
            logits = model.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
        naive.append(torch.sigmoid(torch.logsumexp(logits[:, yes], -1) - torch.logsumexp(logits[:, no], -1)))
    seconds = time.perf_counter() - started
    naive = torch.cat(naive).numpy()
    results["naive_hf_fp32_b32"] = {"seconds": round(seconds, 2), "items_per_s": round(n_items / seconds, 1)}

    scores = {}
    for name, quantize in (("selfjudge_fp32", None), ("selfjudge_int8", "int8")):
        grader = SelfJudge(model=model, quantize=quantize)
        grader.score(samples.head(8))  # build the engine outside the timing
        started = time.perf_counter()
        scores[name] = grader.score(samples).to_numpy()
        seconds = time.perf_counter() - started
        results[name] = {"seconds": round(seconds, 2), "items_per_s": round(n_items / seconds, 1),
                         "max_abs_diff_vs_naive": float(np.abs(scores[name] - naive).max())}
    results["selfjudge_int8"]["decision_flips_vs_fp32_at_0.5"] = float(
        ((scores["selfjudge_int8"] >= 0.5) != (scores["selfjudge_fp32"] >= 0.5)).mean())
    emit({"benchmark": "judge", "machine": machine_info(), "target_items_per_s": 30, "results": results}, "judge")
    return 0


if __name__ == "__main__":
    sys.exit(main())
