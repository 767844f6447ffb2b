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
                   diversity_metric: str = "distinct_2", max_length_rise: float = 0.5,
                   max_score_inflation: float = 0.1) -> dict:
    """Flags for the newest generation in `history` (one metrics dict per generation, oldest first)
    relative to generation 0: held-out perplexity up by more than `max_perplexity_rise` (0.25 = +25%),
    `diversity_metric` of free generations down by more than `max_diversity_drop` (0.25 = -25%), answers
    (`eval_answer_tokens`) longer by more than `max_length_rise` (0.5 = +50%), or the judge's mean score on
    the frozen anchor set (`anchor_score`, the same answers every generation) up by more than
    `max_score_inflation` (absolute): the last two are reward hacking's signs under preference learning."""
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
    out.update(_length_and_inflation(first, last, max_length_rise, max_score_inflation, out["flags"]))
    out["collapsed"] = bool(out["flags"])
    return out


def _length_and_inflation(first: dict, last: dict, max_length_rise: float, max_score_inflation: float,
                          flags: list[str]) -> dict:
    out = {"max_length_rise": max_length_rise, "max_score_inflation": max_score_inflation}
    base_len, length = first.get("eval_answer_tokens"), last.get("eval_answer_tokens")
    if base_len and length is not None and np.isfinite(length):
        out["length_rise"] = length / base_len - 1
        if out["length_rise"] > max_length_rise:
            flags.append(f"answers grew {100 * out['length_rise']:.1f}% longer than generation 0's ({base_len:.1f} -> "
                         f"{length:.1f} tokens; limit {100 * max_length_rise:.0f}%)")
    base_score, score = first.get("anchor_score"), last.get("anchor_score")
    if base_score is not None and score is not None and np.isfinite(base_score) and np.isfinite(score):
        out["score_inflation"] = score - base_score
        if out["score_inflation"] > max_score_inflation:
            flags.append(f"the judge scores the same anchor answers {out['score_inflation']:+.3f} higher than generation "
                         f"0's judge did ({base_score:.3f} -> {score:.3f}; limit +{max_score_inflation:.2f}): inflation")
    return out
