"""Collapse metrics: held-out real-text perplexity, and the monitor that flags a generation whose
perplexity rose, or whose diversity fell, past a limit relative to generation 0.

Model collapse (Shumailov et al., 2024, "AI models collapse when trained on recursively generated
data", Nature 631) shows first as a rising perplexity on real held-out text and a shrinking tail of
the output distribution (falling n-gram diversity); Gerstgrasser et al. (2024, "Is model collapse
inevitable?") show that accumulating real data with synthetic data keeps the rise bounded.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def heldout_perplexity(loaded, texts: Sequence[str], batch_size: int = 8, max_length: int = 256) -> float:
    """exp(total negative log-likelihood / total predicted tokens) of real texts under the model
    (every token after the first, texts cut to `max_length` tokens). Lower = the model finds real text likelier.
    `loaded` is a `LoadedModel`: its facade picks the fast engine or transformers."""
    tokenizer = loaded.tokenizer
    sequences = [tokenizer(str(t), add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    sequences = [s for s in sequences if len(s) >= 2]
    if not sequences:
        return float("nan")
    logprobs = loaded.token_logprobs(sequences, [1] * len(sequences), batch_size)
    total = float(sum(lp.sum() for lp in logprobs))
    count = sum(len(lp) for lp in logprobs)
    return float(math.exp(-total / count))


def collapse_flags(history: list[dict], max_perplexity_rise: float = 0.25, max_diversity_drop: float = 0.25,
                   diversity_metric: str = "distinct_2") -> dict:
    """Flags for the newest generation in `history` (one metrics dict per generation, oldest first)
    relative to generation 0: held-out perplexity up by more than `max_perplexity_rise` (0.25 = +25%),
    or `diversity_metric` of free generations down by more than `max_diversity_drop` (0.25 = -25%)."""
    first, last = history[0], history[-1]
    out = {"generation": len(history) - 1, "flags": [], "max_perplexity_rise": max_perplexity_rise,
           "max_diversity_drop": max_diversity_drop, "diversity_metric": diversity_metric, "collapsed": False}
    if len(history) < 2:
        return out  # generation 0 is the reference
    base_ppl, ppl = first.get("heldout_perplexity"), last.get("heldout_perplexity")
    if base_ppl and ppl is not None and np.isfinite(base_ppl) and np.isfinite(ppl):
        out["perplexity_rise"] = ppl / base_ppl - 1
        if out["perplexity_rise"] > max_perplexity_rise:
            out["flags"].append(f"held-out perplexity rose {100 * out['perplexity_rise']:.1f}% over generation 0 "
                                f"({base_ppl:.2f} -> {ppl:.2f}; limit {100 * max_perplexity_rise:.0f}%)")
    key = f"diversity_{diversity_metric}"
    base_div, div = first.get(key), last.get(key)
    if base_div and div is not None and np.isfinite(base_div) and np.isfinite(div):
        out["diversity_drop"] = 1 - div / base_div
        if out["diversity_drop"] > max_diversity_drop:
            out["flags"].append(f"{diversity_metric} of free generations fell {100 * out['diversity_drop']:.1f}% "
                                f"below generation 0 ({base_div:.3f} -> {div:.3f}; limit {100 * max_diversity_drop:.0f}%)")
    out["collapsed"] = bool(out["flags"])
    return out
