"""Collapse metrics: held-out real-text perplexity and its tails, the probability the model keeps for the
real text's rare tokens, vocabulary coverage and unigram entropy of free generations against real text, and
the monitor that flags a generation whose metrics moved past a limit, and past generation 0's own noise.

Model collapse (Shumailov et al., 2024, "AI models collapse when trained on recursively generated
data", Nature 631) shows first in the **tails**: the per-passage perplexity distribution of real text grows a
long right tail (their Fig. 1), rare events lose probability, the output vocabulary shrinks; only later does
the mean move. Gerstgrasser et al. (2024, "Is model collapse inevitable?") show that accumulating real data
with synthetic data keeps the rise bounded; Drayson, Yilmaz & Lampos (EMNLP 2025) that the decoding strategy
sets the pace.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np

from .diversity import tokenize

TAIL_KEYS = ("heldout_ppl_mean", "heldout_ppl_p90", "heldout_ppl_p99", "rare_token_prob", "vocab_coverage",
             "unigram_entropy")  # what `tail_report` measures; the evaluation reports them under these names
# the direction in which each monitored metric gets worse: +1 = rises, -1 = falls
WORSE = {"heldout_perplexity": 1, "heldout_ppl_mean": 1, "heldout_ppl_p90": 1, "heldout_ppl_p99": 1,
         "rare_token_prob": -1, "vocab_coverage": -1, "unigram_entropy": -1}


def heldout_logprobs(loaded, texts: Sequence[str], batch_size: int = 8, max_length: int = 256) -> list[tuple]:
    """Per text with at least 2 tokens (cut to `max_length`): (token ids, log p of each token after the
    first). `loaded` is a `LoadedModel`: its facade picks the fast engine or transformers."""
    tokenizer = loaded.tokenizer
    sequences = [tokenizer(str(t), add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    sequences = [s for s in sequences if len(s) >= 2]
    if not sequences:
        return []
    logprobs = loaded.token_logprobs(sequences, [1] * len(sequences), batch_size)
    return [(np.asarray(s[1:]), np.asarray(lp, dtype=float)) for s, lp in zip(sequences, logprobs)]


def heldout_perplexity(loaded, texts: Sequence[str], batch_size: int = 8, max_length: int = 256) -> float:
    """exp(total negative log-likelihood / total predicted tokens) of real texts under the model
    (every token after the first, texts cut to `max_length` tokens). Lower = the model finds real text likelier."""
    return pooled_perplexity(heldout_logprobs(loaded, texts, batch_size, max_length))


def pooled_perplexity(scored: list[tuple]) -> float:
    """exp of the mean negative log-likelihood over every scored token of every text (NaN for none)."""
    count = sum(len(lp) for _, lp in scored)
    return float(math.exp(-sum(float(lp.sum()) for _, lp in scored) / count)) if count else float("nan")


def passage_perplexities(scored: list[tuple]) -> np.ndarray:
    """One perplexity per text: exp(mean negative log-likelihood of its tokens). Its distribution is
    Shumailov et al.'s figure: collapse stretches its right tail before it moves the middle."""
    return np.array([math.exp(-float(lp.mean())) for _, lp in scored if len(lp)])


def token_frequencies(tokenizer, texts: Sequence[str]) -> Counter:
    """How often each token id occurs in `texts` (the corpus the rare tokens are defined on)."""
    counts: Counter = Counter()
    for ids in tokenizer([str(t) for t in texts], add_special_tokens=False)["input_ids"]:
        counts.update(ids)
    return counts


def rare_token_prob(scored: list[tuple], frequencies: Counter, decile: float = 0.1) -> float:
    """Mean probability the model gives the real text's rare tokens: the scored token occurrences whose
    frequency in the reference corpus (`frequencies`; unseen = 0) is at or below the `decile` quantile of the
    scored occurrences' frequencies (ties at that count are all in, so the set can hold a little more than
    10%; it is the same set for every generation, since the texts and the corpus do not change). The
    low-probability events collapse loses first (Shumailov et al. 2024)."""
    ids = np.concatenate([t for t, _ in scored]) if scored else np.array([])
    logprobs = np.concatenate([lp for _, lp in scored]) if scored else np.array([])
    if not len(ids):
        return float("nan")
    counts = np.array([frequencies.get(int(i), 0) for i in ids])
    rare = counts <= np.quantile(counts, decile)
    return float(np.exp(logprobs[rare]).mean())


def _words(texts: Sequence[str]) -> list[str]:
    return [w.lower() for t in texts for w in tokenize(str(t))]


def vocab_coverage(texts: Sequence[str], real_texts: Sequence[str]) -> float:
    """Distinct words of `texts` / distinct words of `real_texts`, both cut to the same number of words
    (the smaller total), so the ratio compares vocabularies, not lengths. 1 = as rich as the real text."""
    words, real = _words(texts), _words(real_texts)
    size = min(len(words), len(real))
    return len(set(words[:size])) / len(set(real[:size])) if size else float("nan")


def unigram_entropy(texts: Sequence[str], max_words: int | None = None) -> float:
    """Shannon entropy (bits) of the word unigram distribution of `texts` (the first `max_words` words)."""
    words = _words(texts)[:max_words]
    if not words:
        return float("nan")
    p = np.array(list(Counter(words).values()), dtype=float) / len(words)
    return float(-(p * np.log2(p)).sum())


def tail_report(scored: list[tuple], frequencies: Counter, free_texts: Sequence[str],
                real_texts: Sequence[str]) -> dict:
    """The tail metrics of one model: per-passage perplexity mean, 90th and 99th percentile (of `scored`, the
    model's log-probs of held-out real text), `rare_token_prob`, and `vocab_coverage` / `unigram_entropy` of
    its free generations `free_texts` against the real continuations `real_texts` of the same prompts
    (`unigram_entropy_real`: the real text's, at the same number of words)."""
    ppl = passage_perplexities(scored)
    size = min(len(_words(free_texts)), len(_words(real_texts)))
    return {"heldout_ppl_mean": float(ppl.mean()) if len(ppl) else float("nan"),
            "heldout_ppl_p90": float(np.percentile(ppl, 90)) if len(ppl) else float("nan"),
            "heldout_ppl_p99": float(np.percentile(ppl, 99)) if len(ppl) else float("nan"),
            "rare_token_prob": rare_token_prob(scored, frequencies),
            "vocab_coverage": vocab_coverage(free_texts, real_texts),
            "unigram_entropy": unigram_entropy(free_texts, size),
            "unigram_entropy_real": unigram_entropy(real_texts, size)}


def bootstrap_noise(scored: list[tuple], frequencies: Counter, free_texts: Sequence[str],
                    real_texts: Sequence[str], repeats: int = 200, seed: int = 0) -> dict:
    """Generation 0's noise floor: per metric, the half-width of its 95% bootstrap interval relative to its
    value (0.05 = +-5%), resampling held-out passages (perplexity metrics) and free generations with their
    real continuations (vocabulary metrics). The collapse monitor fires only on moves larger than these,
    so a metric that wobbles by its sampling noise alone never raises a flag."""
    from .diversity import distinct_n

    rng = np.random.default_rng(seed)
    ppl = passage_perplexities(scored)
    free, real = list(free_texts), list(real_texts)
    draws: dict[str, list[float]] = {k: [] for k in ("heldout_perplexity", "heldout_ppl_mean", "heldout_ppl_p90",
                                                     "heldout_ppl_p99", "rare_token_prob", "vocab_coverage",
                                                     "unigram_entropy", "diversity_distinct_2")}
    for _ in range(repeats):
        take = rng.integers(0, len(scored), len(scored)) if len(scored) else np.array([], int)
        sample = [scored[i] for i in take]
        draws["heldout_perplexity"].append(pooled_perplexity(sample))
        draws["heldout_ppl_mean"].append(float(ppl[take].mean()) if len(take) else float("nan"))
        draws["heldout_ppl_p90"].append(float(np.percentile(ppl[take], 90)) if len(take) else float("nan"))
        draws["heldout_ppl_p99"].append(float(np.percentile(ppl[take], 99)) if len(take) else float("nan"))
        draws["rare_token_prob"].append(rare_token_prob(sample, frequencies))
        pick = rng.integers(0, len(free), len(free)) if free else np.array([], int)
        free_b = [free[i] for i in pick]
        real_b = [real[i] for i in pick] if len(real) == len(free) else real
        draws["vocab_coverage"].append(vocab_coverage(free_b, real_b))
        draws["unigram_entropy"].append(unigram_entropy(free_b, min(len(_words(free_b)), len(_words(real_b)))))
        draws["diversity_distinct_2"].append(distinct_n(free_b, 2))
    out = {}
    for key, values in draws.items():
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        if len(values) < 2 or not np.mean(values):
            continue
        low, high = np.percentile(values, [2.5, 97.5])
        out[key] = float((high - low) / 2 / abs(np.mean(values)))
    return out


def collapse_flags(history: list[dict], max_perplexity_rise: float = 0.25, max_diversity_drop: float = 0.25,
                   diversity_metric: str = "distinct_2", max_length_rise: float = 0.5,
                   max_score_inflation: float = 0.1, max_tail_rise: float = 0.25, max_rare_drop: float = 0.25,
                   max_coverage_drop: float = 0.25) -> dict:
    """Flags for the newest generation in `history` (one metrics dict per generation, oldest first)
    relative to generation 0: held-out perplexity up by more than `max_perplexity_rise` (0.25 = +25%),
    `diversity_metric` of free generations down by more than `max_diversity_drop` (0.25 = -25%), the tails
    (`heldout_ppl_p90` up by more than `max_tail_rise`, `rare_token_prob` down by more than `max_rare_drop`,
    `vocab_coverage` down by more than `max_coverage_drop`), answers (`eval_answer_tokens`) longer by more
    than `max_length_rise` (0.5 = +50%), or the judge's mean score on the frozen anchor set (`anchor_score`,
    the same answers every generation) up by more than `max_score_inflation` (absolute): the last two are
    reward hacking's signs under preference learning.

    Noise floor: where generation 0's evaluation carries `noise` (`bootstrap_noise`: each metric's relative
    95% bootstrap half-width), a relative move fires only when it is larger than both its limit and that
    half-width (a negative limit still flags any change: the floor only raises limits >= 0); `noise_floor` and
    `changes` (signed, relative) are in the result."""
    first, last = history[0], history[-1]
    out = {"generation": len(history) - 1, "flags": [], "max_perplexity_rise": max_perplexity_rise,
           "max_diversity_drop": max_diversity_drop, "diversity_metric": diversity_metric, "collapsed": False}
    if len(history) < 2:
        return out  # generation 0 is the reference
    noise = first.get("noise") or {}
    diversity_key = f"diversity_{diversity_metric}"
    checks = [("heldout_perplexity", +1, max_perplexity_rise, "held-out perplexity rose", "perplexity_rise"),
              (diversity_key, -1, max_diversity_drop, f"{diversity_metric} of free generations fell", "diversity_drop"),
              ("heldout_ppl_p90", +1, max_tail_rise, "the 90th percentile of per-passage perplexity rose", "tail_rise"),
              ("rare_token_prob", -1, max_rare_drop, "the probability of the real text's rare tokens fell", "rare_drop"),
              ("vocab_coverage", -1, max_coverage_drop, "vocabulary coverage of free generations fell",
               "coverage_drop")]
    out["changes"], out["noise_floor"] = {}, {}
    for key, worse, limit, words, name in checks:
        base, value = first.get(key), last.get(key)
        if not base or value is None or not np.isfinite(base) or not np.isfinite(value):
            continue
        change = value / base - 1
        out["changes"][key] = change
        out[name] = worse * change  # how much worse, relative (negative: better)
        floor = float(noise.get(key, 0.0))
        out["noise_floor"][key] = floor
        if worse * change > (max(limit, floor) if limit >= 0 else limit):  # a negative limit: flag any change
            why = f"limit {100 * limit:.0f}%" + (f", gen-0 noise +-{100 * floor:.1f}%" if floor else "")
            out["flags"].append(f"{words} {100 * abs(change):.1f}% against generation 0 ({base:.4g} -> {value:.4g}; "
                                f"{why})")
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
