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
from workbench.sampling import generate  # noqa: E402
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
    pairwise(model)
    consistency_10k()
    return 0


def consistency_10k(n: int = 10_000, k: int = 8, repeats: int = 3, seed: int = 0) -> dict:
    """Seconds for Consistency to score `n` arithmetic samples, K=`k` per prompt (the task's own extractor,
    the final number, and the "text" extractor), best of `repeats`; no model involved. Issue target: < 1 s.
    Writes benchmarks/results/judge_consistency.json."""
    import pandas as pd

    from workbench.graders.consistency import Consistency

    rng = np.random.default_rng(seed)
    answers = rng.integers(0, 4, n)  # a few distinct answers per prompt, as sampled arithmetic gives
    samples = pd.DataFrame({"prompt_id": [f"p{i // k:05d}" for i in range(n)], "task": "arithmetic",
                            "completion": [f"Adding them up, the answer is {a}." for a in answers]})
    results = {"samples": n, "k": k, "repeats": repeats}
    for extractor in (None, "text"):
        grader, times = Consistency(extractor=extractor), []
        for _ in range(repeats):
            started = time.perf_counter()
            scores = grader.score(samples)
            times.append(time.perf_counter() - started)
        results[f"extractor_{extractor or 'task'}"] = {
            "seconds_best": round(min(times), 4), "seconds_all": [round(t, 4) for t in times],
            "samples_per_s": round(n / min(times)), "mean_score": round(float(scores.mean()), 4)}
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the 2 cores slows it
    emit({"benchmark": "judge_consistency", "machine": machine_info(), "target_seconds": 1.0, "results": results},
         "judge_consistency")
    return results


def pairwise(model=None, k: int = 8, opponents: int = 3, n_prompts: int = 8, rounds: int = 2) -> dict:
    """PairwiseJudge comparisons (forward passes, one per order of a pair) per second: score() (the engine's
    shared-prefix path, one call per prompt, so the prefix covers rubric + task) against a naive transformers
    forward over the full pair prompts (left-padded batches of 32, fp32), on the same items (K samples for
    arithmetic and instruction prompts, the pairs score() draws). Timed prompt by prompt, the two sides
    alternating, best of `rounds` per prompt: other work on the 2 cores then slows both sides alike. Then one
    compare() call over every pair (the path prob_first callers take). Estimates grading 64 prompts x K=8,
    opponents=3. Issue target: >= 2x. Writes benchmarks/results/judge_pairwise.json."""
    from workbench.graders.pairwise import PairwiseJudge

    model = model or load_model("smollm2-135m", dtype="fp32")
    samples, items = _pairwise_items(model, k, n_prompts, opponents)
    judge = PairwiseJudge(model=model, opponents=opponents)
    judge.prob_first(["warm-up"], ["a"], ["b"])  # build the engine outside the timing
    naive_s, score_s, naive, stats = _pairwise_timed(model, judge, samples, items, rounds)
    passes = 2 * sum(len(v[1]) for v in items.values())
    results = {"prompts": n_prompts, "k": k, "opponents": opponents, "pairs": passes // 2, "passes": passes,
               "mean_pass_tokens": stats.pop("mean_pass_tokens"), "rounds": rounds,
               "naive_hf_fp32_b32": {"seconds": round(naive_s, 2), "passes_per_s": round(passes / naive_s, 2)},
               "pairwise_score": {"seconds": round(score_s, 2), "passes_per_s": round(passes / score_s, 2),
                                  "pairs_per_s": round(passes / 2 / score_s, 2),
                                  "speedup_vs_naive": round(naive_s / score_s, 2), **stats}}
    prompts, a, b = (sum((list(v[i]) for v in items.values()), []) for i in range(3))
    started = time.perf_counter()
    table = judge.compare(prompts, a, b)
    compare_s = time.perf_counter() - started
    ends = np.cumsum([0] + [len(v[1]) for v in items.values()])
    ours = np.concatenate([np.concatenate([table["p_ab"][s:e], table["p_ba"][s:e]]) for s, e in zip(ends, ends[1:])])
    results["pairwise_compare_one_call"] = {  # timed once: its speedup is the less reliable number
        "seconds": round(compare_s, 2), "passes_per_s": round(passes / compare_s, 2),
        "speedup_vs_naive_rate": round(naive_s / compare_s, 2),
        "max_abs_diff_vs_naive": float(np.abs(ours - np.concatenate(naive)).max())}
    results["estimate_64_prompts_k8"] = _pairwise_estimate(opponents, passes / score_s)
    results["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other work on the 2 cores skews both sides
    emit({"benchmark": "judge_pairwise", "machine": machine_info(), "target_speedup": 2.0, "results": results},
         "judge_pairwise")
    return results


def _pairwise_timed(model, judge, samples, items: dict, rounds: int):
    """Per prompt, alternating: the naive forward over its pair prompts, then judge.score over its samples;
    best of `rounds` each. Returns (naive seconds, score seconds, naive P(first) per prompt, judge stats)."""
    naive_s, score_s, naive, lengths, consistent, firsts = {}, {}, [], [], [], []
    for _ in range(rounds):
        for prompt_id, (prompts, a, b) in items.items():
            sequences = [model.encode(judge.prompt_text(*t), chat=True) for t in zip(prompts + prompts, a + b, b + a)]
            started = time.perf_counter()
            probs = _naive_pair_probs(model, sequences, judge.candidate_ids())
            naive_s[prompt_id] = min(naive_s.get(prompt_id, np.inf), time.perf_counter() - started)
            started = time.perf_counter()
            judge.score(samples[samples["prompt_id"] == prompt_id])
            score_s[prompt_id] = min(score_s.get(prompt_id, np.inf), time.perf_counter() - started)
            if len(naive) < len(items):
                naive.append(probs)
                lengths += [len(s) for s in sequences]
                consistent += [judge.position_consistency_] * len(a)
                firsts += [judge.p_first_] * len(a)
    stats = {"position_consistency": round(float(np.mean(consistent)), 3), "p_first": round(float(np.mean(firsts)), 3),
             "mean_pass_tokens": round(float(np.mean(lengths)), 1),
             "speedup_per_prompt": {p: round(naive_s[p] / score_s[p], 2) for p in items}}
    return sum(naive_s.values()), sum(score_s.values()), naive, stats


def _pairwise_items(model, k: int, n_prompts: int, opponents: int):
    """K samples per prompt (half arithmetic, half instructions) and, per prompt_id, the pairs
    PairwiseJudge.score draws less those with identical answers (a tie, no forward pass): (prompts, a, b)."""
    import pandas as pd

    from workbench.graders.pairwise import PairwiseJudge

    half = n_prompts // 2
    tasks = pd.concat([get_task("arithmetic", n=half), get_task("instructions", n=n_prompts - half)])
    samples = generate(tasks[["prompt_id", "prompt", "chat"]], model=model, n_per_prompt=k, max_new_tokens=40,
                       seed=0, batch_size=64).reset_index(drop=True)
    plan = PairwiseJudge(model=model, opponents=opponents).plan(samples)
    plan = plan[samples["completion"][plan["a"]].to_numpy() != samples["completion"][plan["b"]].to_numpy()]
    items = {}
    for prompt_id, pairs in plan.groupby("group", sort=False):
        items[prompt_id] = (list(samples["prompt"][pairs["a"]]), list(samples["completion"][pairs["a"]]),
                            list(samples["completion"][pairs["b"]]))
    return samples, items


def _naive_pair_probs(model, sequences: list, candidates) -> np.ndarray:
    """P(first wins) from a plain transformers forward over each full pair prompt, left-padded batches of 32."""
    import torch

    (cand_a, cand_b), out = candidates, []
    for start in range(0, len(sequences), 32):
        ids, mask = left_padded(sequences[start:start + 32], model.tokenizer.pad_token_id)
        with torch.inference_mode():
            logits = model.model(input_ids=ids, attention_mask=mask).logits[:, -1].float()
        out.append(torch.sigmoid(torch.logsumexp(logits[:, cand_a], -1) - torch.logsumexp(logits[:, cand_b], -1)))
    return torch.cat(out).double().numpy()


def _pairwise_estimate(opponents: int, passes_per_s: float) -> dict:
    """Time to grade 64 prompts x K=8 at the measured rate: with the pairs score() draws (each sample draws
    `opponents`, a pair drawn from both sides counted once), and with 64*8*opponents/2 pairs (the floor)."""
    import pandas as pd

    from workbench.graders.pairwise import PairwiseJudge

    big = pd.DataFrame({"prompt_id": np.repeat(np.arange(64), 8).astype(str), "prompt": "q",
                        "sample_id": [f"s{i:04d}" for i in range(512)], "completion": "c"})
    drawn, floor = len(PairwiseJudge(model="unused", opponents=opponents).plan(big)), 64 * 8 * opponents // 2
    return {"pairs_drawn": drawn, "seconds_drawn": round(2 * drawn / passes_per_s, 1),
            "pairs_floor": floor, "seconds_floor": round(2 * floor / passes_per_s, 1)}

if __name__ == "__main__":
    sys.exit(main())
