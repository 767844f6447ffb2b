"""Judge-bias probes: does the judge reward where an answer is shown, how long it is, how sure it sounds, or
that the judge model wrote it, rather than whether it is right?

Each probe changes one thing the judge should ignore and measures how the judge's verdict moves:

- `position_bias`: pairwise judges shown two answers of equal quality (the same answer twice, and two
  answers to the same prompt with the same verifier score) in both orders (Zheng et al. 2023, "Judging
  LLM-as-a-Judge with MT-Bench and Chatbot Arena": position bias, swap consistency).
- `verbosity_bias`: the same answer padded with content-free words (Zheng et al. 2023: verbosity bias;
  Dubois et al. 2024, "Length-Controlled AlpacaEval": judges' preference for longer outputs).
- `authority_bias`: the same answer with "I am certain this is correct." appended.
- `self_preference`: the model's own (correct) answers against equally correct text it did not write, the
  task's references (Panickssery et al. 2024, "LLM Evaluators Recognize and Favor Their Own Generations"),
  and the correlation of the judge's score with the judge model's perplexity of the text (Wataoka et al.
  2024, "Self-Preference Bias in LLM-as-a-Judge": judges favour text that is familiar, low perplexity, to them).

A judge is pairwise when it has `prob_first(prompts, first, second) -> P(the answer shown first wins)`
(checked first), pointwise when it has `score(samples) -> Series in [0, 1]` (`SelfJudge`).

Every probe returns a dict: probe, measure (what the estimate is), estimate, ci_low, ci_high (95%), n,
ci_method, warning (None, or why the estimate is unreliable: n < 20, no rows, not applicable; never an
exception), and probe-specific fields. CIs are percentile bootstraps over rows (pairs, prompts), seeded,
so the same inputs give the same interval. `run_probes` puts them in one table.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputDataError

# Appended verbatim to the completion. Content-free: it restates nothing and adds no claim; it has no
# digits, so a verifier that reads the final number (arithmetic) gives the padded answer the same score.
DEFAULT_PAD = " Indeed, as stated above, that is the answer."
AUTHORITY = " I am certain this is correct."
MIN_N = 20  # below this many rows a result carries a warning
N_BOOT = 1000
_NAN = float("nan")
SWAP_MEASURE = "share of distinct equal-quality pairs whose two orders pick the same answer; 1 = order-blind"
PERPLEXITY_MEASURE = "Spearman(judge verdict, judge model's log perplexity of the text); < 0 = prefers familiar text"
_COLUMNS = ["probe", "measure", "estimate", "ci_low", "ci_high", "n", "ci_method", "warning"]


def is_pairwise(judge) -> bool:
    """True for a judge with `prob_first` (pairwise), False for one with only `score` (pointwise)."""
    return callable(getattr(judge, "prob_first", None))


def _warning(n: int) -> str | None:
    if n == 0:
        return "no rows: nothing to estimate (NaN)"
    return f"only {n} rows (< {MIN_N}): the estimate and its CI are unreliable" if n < MIN_N else None


def _result(probe: str, measure: str, estimate=_NAN, ci=(_NAN, _NAN), n: int = 0, n_boot: int = N_BOOT,
            seed: int = 0, warning: str | None = None, **extra) -> dict:
    return {"probe": probe, "measure": measure, "estimate": float(estimate), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "n": int(n),
            "ci_method": f"bootstrap percentile over rows ({n_boot} resamples, seed {seed})",
            "warning": warning or _warning(int(n)), **extra}


def _resamples(n: int, n_boot: int, seed: int):
    """Bootstrap row indices in chunks of [k, n] (bounded memory for large n)."""
    rng = np.random.default_rng(seed)
    chunk = max(1, 2_000_000 // max(n, 1))
    for start in range(0, n_boot, chunk):
        yield rng.integers(0, n, (min(chunk, n_boot - start), n))


def mean_ci(values, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Mean of the finite values, its 95% percentile-bootstrap CI (resampling the values), and n."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return _NAN, (_NAN, _NAN), 0
    means = np.concatenate([values[index].mean(axis=1) for index in _resamples(len(values), n_boot, seed)])
    low, high = np.percentile(means, [2.5, 97.5])
    return float(values.mean()), (float(low), float(high)), len(values)


def _rowwise_spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    rx, ry = rankdata(x, axis=-1), rankdata(y, axis=-1)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rx * ry).sum(-1) / np.sqrt((rx ** 2).sum(-1) * (ry ** 2).sum(-1))


def spearman_ci(x, y, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, tuple[float, float], int]:
    """Spearman's rank correlation of the finite pairs, its 95% percentile-bootstrap CI (resampling pairs;
    resamples where one side is constant are skipped) and n. NaN below 3 pairs or for a constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 3:
        return _NAN, (_NAN, _NAN), len(x)
    estimate = float(_rowwise_spearman(x, y))
    boots = np.concatenate([_rowwise_spearman(x[i], y[i]) for i in _resamples(len(x), n_boot, seed)])
    if not np.isfinite(boots).any():
        return estimate, (_NAN, _NAN), len(x)
    low, high = np.nanpercentile(boots, [2.5, 97.5])
    return estimate, (float(low), float(high)), len(x)


def _rows(samples: pd.DataFrame, probe: str) -> pd.DataFrame:
    """The rows with a prompt and a completion, both as str; an empty frame stays empty (no error)."""
    if samples is None or len(samples) == 0:
        return pd.DataFrame(columns=["prompt", "completion"])
    missing = [c for c in ("prompt", "completion") if c not in samples.columns]
    if missing:
        raise InputDataError(f"Probe {probe!r} needs columns {missing}, which the samples lack.",
                             "Pass generated samples (prompt, completion; a reference column for self_preference).")
    rows = samples[samples["prompt"].notna() & samples["completion"].notna()].reset_index(drop=True)
    return rows.assign(prompt=rows["prompt"].astype(str), completion=rows["completion"].astype(str))


def _column(samples: pd.DataFrame, name: str | None) -> str | None:
    """The column holding `name`'s scores: score__<name> (a graded table) or <name> itself; None if absent."""
    if not name:
        return None
    for column in (name if name.startswith("score__") else "score__" + name, name):
        if column in samples.columns:
            return column
    return None


def _group_key(rows: pd.DataFrame) -> pd.Series:
    return rows["prompt_id"].astype(str) if "prompt_id" in rows.columns else rows["prompt"]


def _judge_scores(judge, frame: pd.DataFrame) -> np.ndarray:
    """A pointwise judge's scores of `frame`'s rows (one call), as floats."""
    if len(frame) == 0:
        return np.zeros(0)
    return np.asarray(judge.score(frame.reset_index(drop=True)), dtype=float)


def _prob_beats(judge, prompts: list, a: list, b: list) -> np.ndarray:
    """P(a beats b) from a pairwise judge, position-balanced: the mean of P(a wins shown first) and
    1 - P(b wins shown first), from one `prob_first` call over both orders (2n items)."""
    if not len(a):
        return np.zeros(0)
    p = np.asarray(judge.prob_first(list(prompts) * 2, list(a) + list(b), list(b) + list(a)), dtype=float)
    return (p[:len(a)] + 1 - p[len(a):]) / 2


def _equal_quality_pairs(rows: pd.DataFrame, verifier: str | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(identical, matched): every answer against itself; and disjoint pairs of different answers to the same
    prompt with the same verifier score (consecutive distinct completions within each prompt and score)."""
    identical = pd.DataFrame({"prompt": rows["prompt"], "a": rows["completion"], "b": rows["completion"]})
    column, matched = _column(rows, verifier), []
    if column is not None:
        scored = rows.assign(_key=_group_key(rows), _score=pd.to_numeric(rows[column], errors="coerce"))
        for _, group in scored[np.isfinite(scored["_score"])].groupby(["_key", "_score"], sort=False):
            texts = list(dict.fromkeys(group["completion"]))
            prompt = group["prompt"].iloc[0]
            matched += [(prompt, texts[i], texts[i + 1]) for i in range(0, len(texts) - 1, 2)]
    return identical, pd.DataFrame(matched, columns=["prompt", "a", "b"])


def position_bias(judge, samples: pd.DataFrame, verifier: str | None = "verifier", n_boot: int = N_BOOT,
                  seed: int = 0) -> dict:
    """Position bias of a pairwise judge on equal-quality pairs (Zheng et al. 2023, MT-Bench).

    Pairs: each answer against itself (a vs a), and two different answers to the same prompt with the same
    verifier score (when `verifier`'s column is present), the latter shown in both orders.
    estimate: P(the answer shown first wins), the mean `prob_first` per pair (a vs a: one call; other pairs:
    the mean over both orders); 0.5 = no position bias. CI over pairs.
    swap_consistency (a nested result): over the distinct pairs, the share whose two orders pick the same
    answer (winner = the side with prob_first != 0.5; both orders at exactly 0.5 count as agreeing).
    A judge that always prefers the first slot has 0; an order-blind judge 1.
    Pointwise judges score one answer at a time: not applicable (NaN, applicable=False, said in `warning`).
    """
    measure = "P(first answer wins) on equal-quality pairs; 0.5 = unbiased"
    if not is_pairwise(judge):
        note = "not applicable: a pointwise judge scores one answer at a time, so it sees no position"
        return _result("position_bias", measure, warning=note, n_boot=n_boot, seed=seed, applicable=False,
                       swap_consistency=_result("swap_consistency", SWAP_MEASURE, n_boot=n_boot, seed=seed,
                                                        warning=note, applicable=False))
    identical, matched = _equal_quality_pairs(_rows(samples, "position_bias"), verifier)
    k, m = len(identical), len(matched)
    p = np.asarray(judge.prob_first(list(identical["prompt"]) + list(matched["prompt"]) * 2,
                                    list(identical["a"]) + list(matched["a"]) + list(matched["b"]),
                                    list(identical["b"]) + list(matched["b"]) + list(matched["a"])),
                   dtype=float) if k + m else np.zeros(0)
    p_ab, p_ba = p[k:k + m], p[k + m:]
    per_pair = np.concatenate([p[:k], (p_ab + p_ba) / 2])
    estimate, ci, n = mean_ci(per_pair, n_boot, seed)
    agree = (np.sign(p_ab - 0.5) == -np.sign(p_ba - 0.5)).astype(float)
    s_estimate, s_ci, s_n = mean_ci(agree, n_boot, seed)
    swap = _result("swap_consistency", SWAP_MEASURE, s_estimate, s_ci, s_n, n_boot, seed, applicable=True,
                   warning=None if m or _column(samples, verifier) else
                   f"no distinct pairs: needs a {verifier!r} score column and 2+ answers per prompt with equal scores")
    return _result("position_bias", measure, estimate, ci, n, n_boot, seed, applicable=True,
                   n_identical=k, n_matched=m, p_first_identical=float(np.mean(p[:k])) if k else _NAN,
                   swap_consistency=swap)


def _perturbation_probe(judge, samples: pd.DataFrame, suffix: str, probe: str, n_boot: int, seed: int) -> dict:
    """The judge's verdict on each answer with `suffix` appended against the answer as it was."""
    rows = _rows(samples, probe)
    changed = rows.assign(completion=rows["completion"] + suffix)
    if is_pairwise(judge):
        wins = _prob_beats(judge, list(rows["prompt"]), list(changed["completion"]), list(rows["completion"]))
        estimate, ci, n = mean_ci(wins, n_boot, seed)
        return _result(probe, "P(changed answer beats original), position-balanced; 0.5 = no bias",
                       estimate, ci, n, n_boot, seed, suffix=suffix, null=0.5, pairwise=True)
    scores = _judge_scores(judge, pd.concat([rows, changed], ignore_index=True))
    original, new = scores[:len(rows)], scores[len(rows):]
    estimate, ci, n = mean_ci(new - original, n_boot, seed)
    return _result(probe, "mean score change (changed - original), paired by row; 0 = no bias",
                   estimate, ci, n, n_boot, seed, suffix=suffix, null=0.0, pairwise=False,
                   mean_original=float(np.nanmean(original)) if len(original) else _NAN,
                   mean_changed=float(np.nanmean(new)) if len(new) else _NAN)


def verbosity_bias(judge, samples: pd.DataFrame, pad: str = DEFAULT_PAD, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict:
    """Verbosity bias: the same answer padded with content-free words (Zheng et al. 2023, MT-Bench;
    Dubois et al. 2024, length-controlled AlpacaEval, which regresses length out of win rates instead).

    Padding: `pad` is appended verbatim to every completion (default DEFAULT_PAD, " Indeed, as stated above,
    that is the answer.": 8 words, no new claim, no digits, so a final-number verifier scores it the same).
    Pointwise: mean paired score difference (padded - original) with CI; 0 = no bias.
    Pairwise: P(padded version wins), position-balanced (both orders averaged); 0.5 = no bias.
    """
    return _perturbation_probe(judge, samples, pad, "verbosity_bias", n_boot, seed)


def authority_bias(judge, samples: pd.DataFrame, claim: str = AUTHORITY, n_boot: int = N_BOOT,
                   seed: int = 0) -> dict:
    """Authority bias: the same answer with " I am certain this is correct." appended (a confidence claim
    with no content; in the spirit of Zheng et al. 2023's bias probes). Pointwise: mean paired score change
    (with claim - original) with CI; pairwise: P(the version with the claim wins), position-balanced."""
    return _perturbation_probe(judge, samples, claim, "authority_bias", n_boot, seed)


def _own_and_references(samples: pd.DataFrame, reference_column: str,
                        verifier: str | None) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(own, references, counts): the own samples with a reference (only the correct ones when a verifier
    column is present; none whose text equals the reference, a vacuous comparison), and one reference row
    per prompt (completion = the reference text) for the prompts that keep an own sample."""
    rows = _rows(samples, "self_preference")
    if reference_column not in rows.columns:
        if len(rows):
            return rows.iloc[:0], rows.iloc[:0], {"missing_reference": True}
        rows = rows.assign(**{reference_column: pd.Series(dtype=object)})
    rows = rows[rows[reference_column].notna()].assign(_key=lambda r: _group_key(r))
    rows = rows.assign(**{reference_column: rows[reference_column].astype(str)})
    column, counts = _column(rows, verifier), {"missing_reference": False}
    if column is not None:
        correct = pd.to_numeric(rows[column], errors="coerce") >= 0.5
        counts["dropped_incorrect"] = int((~correct).sum())
        rows = rows[correct]
    same = rows["completion"].str.strip() == rows[reference_column].str.strip()
    counts["dropped_identical_to_reference"] = int(same.sum())
    own = rows[~same].reset_index(drop=True)
    references = own.drop_duplicates("_key").assign(completion=lambda r: r[reference_column]).reset_index(drop=True)
    return own, references, counts


def _judge_model(judge, model):
    """The model whose perplexity the correlation uses: `model` if given, else the judge's own local model."""
    if model is not None:
        return model
    if getattr(judge, "_backend", None) is None and hasattr(judge, "loaded"):
        return judge.loaded
    return None


def _log_perplexity(model, frame: pd.DataFrame) -> np.ndarray:
    """log perplexity of each completion given its prompt under `model` (a LoadedModel or spec), via the
    `Perplexity` grader (mean token log-probability from `LoadedModel.token_logprobs`)."""
    from ..graders.model_graders import Perplexity

    if len(frame) == 0:
        return np.zeros(0)
    inverse = np.asarray(Perplexity(model=model, name="judge_perplexity").score(frame.reset_index(drop=True)), float)
    return -np.log(inverse)


def self_preference(judge, samples: pd.DataFrame, model=None, reference_column: str = "reference",
                    verifier: str | None = "verifier", n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Self-preference: does the judge favour the model's own answers over equally correct text it did not
    write (Panickssery et al. 2024)? And does it favour text its model finds likely (Wataoka et al. 2024)?

    Own samples are `samples` (the model's completions) with a `reference_column` text, restricted to the
    correct ones when a verifier column (score__<verifier> or <verifier>) is present, paired by prompt
    (prompt_id, else prompt) with the reference. Own texts identical to the reference are dropped (counted).
    estimate: pointwise, mean over prompts of (mean own score - reference score); pairwise, mean over prompts
    of P(own beats reference), position-balanced (0.5 = none). CI over prompts.
    perplexity_correlation (nested result): Spearman between the judge's verdict and the judge model's log
    perplexity of the text given the prompt (`model`, default the judge's own local model; NaN with a
    warning when there is none). Pointwise: over all own and reference texts (judge score vs perplexity);
    pairwise: over own samples (P(own wins) vs log ppl(own) - log ppl(reference)). Negative = the judge
    prefers text its model finds familiar.
    """
    own, references, counts = _own_and_references(samples, reference_column, verifier)
    pairwise = is_pairwise(judge)
    measure = ("P(own answer beats the reference), position-balanced, per prompt; 0.5 = none" if pairwise else
               "mean judge score: own (correct) - reference, per prompt; 0 = none")
    if counts["missing_reference"]:
        note = f"no {reference_column!r} column: nothing to compare the model's own answers with"
        return _result("self_preference", measure, n_boot=n_boot, seed=seed, warning=note,
                       perplexity_correlation=_result("self_preference_perplexity", PERPLEXITY_MEASURE,
                                                              n_boot=n_boot, seed=seed, warning=note))
    ref_of, reference_scores = dict(zip(references["_key"], references["completion"])), None
    if pairwise:
        own_value = _prob_beats(judge, list(own["prompt"]), list(own["completion"]), [ref_of[k] for k in own["_key"]])
        per_prompt = pd.Series(own_value).groupby(own["_key"].to_numpy()).mean()
    else:
        scores = _judge_scores(judge, pd.concat([own, references], ignore_index=True))
        own_value, reference_scores = scores[:len(own)], scores[len(own):]
        per_prompt = pd.Series(own_value).groupby(own["_key"].to_numpy()).mean()
        per_prompt -= per_prompt.index.map(dict(zip(references["_key"], reference_scores))).to_numpy(dtype=float)
    estimate, ci, n = mean_ci(per_prompt.to_numpy(), n_boot, seed)
    correlation = _perplexity_correlation(judge, model, own, references, own_value, reference_scores, n_boot, seed)
    return _result("self_preference", measure, estimate, ci, n, n_boot, seed, pairwise=pairwise,
                   n_own=len(own), **{k: v for k, v in counts.items() if k != "missing_reference"},
                   perplexity_correlation=correlation)


def _perplexity_correlation(judge, model, own, references, own_value, reference_scores, n_boot, seed) -> dict:
    """Spearman(judge verdict, judge model's log perplexity) for `self_preference` (Wataoka et al. 2024)."""
    measure = ("Spearman(P(own wins), log ppl(own) - log ppl(reference)); < 0 = prefers familiar text"
               if reference_scores is None else PERPLEXITY_MEASURE)
    if len(own) == 0:
        return _result("self_preference_perplexity", measure, n_boot=n_boot, seed=seed)
    model = _judge_model(judge, model)
    if model is None:
        return _result("self_preference_perplexity", measure, n_boot=n_boot, seed=seed,
                       warning="no local judge model to compute perplexity with: pass model=")
    log_ppl = _log_perplexity(model, pd.concat([own, references], ignore_index=True))
    own_ppl, ref_ppl = log_ppl[:len(own)], dict(zip(references["_key"], log_ppl[len(own):]))
    if reference_scores is None:
        x, y = own_value, own_ppl - own["_key"].map(ref_ppl).to_numpy(dtype=float)
    else:
        x, y = np.concatenate([own_value, reference_scores]), log_ppl
    estimate, ci, n = spearman_ci(x, y, n_boot, seed)
    warning = "fewer than 3 texts: no correlation (NaN)" if 0 < n < 3 else None
    return _result("self_preference_perplexity", measure, estimate, ci, n, n_boot, seed, warning=warning,
                   mean_log_perplexity_own=float(np.mean(own_ppl)) if len(own_ppl) else _NAN,
                   mean_log_perplexity_reference=float(np.mean(log_ppl[len(own):])) if len(references) else _NAN)


class _MemoJudge:
    """A pointwise judge whose scores are cached by (prompt, completion) text, so that `run_probes` scores
    the original answers once, not once per probe. Everything else is the wrapped judge's."""

    def __init__(self, judge):
        self.judge, self.cache = judge, {}

    def __getattr__(self, name):
        return getattr(self.judge, name)

    def score(self, samples: pd.DataFrame) -> pd.Series:
        keys = list(zip(samples["prompt"], samples["completion"]))
        new: dict = {}
        for position, key in enumerate(keys):
            if key not in self.cache and key not in new:
                new[key] = position
        if new:
            scores = np.asarray(self.judge.score(samples.iloc[list(new.values())]), dtype=float)
            self.cache.update(zip(new, scores))
        return pd.Series([self.cache[key] for key in keys], index=samples.index, dtype=float)


def run_probes(judge, samples: pd.DataFrame, model=None, verifier: str | None = "verifier",
               reference_column: str = "reference", pad: str = DEFAULT_PAD, n_boot: int = N_BOOT,
               seed: int = 0) -> pd.DataFrame:
    """All probes on one judge, as a table for notebooks: one row per estimate (columns probe, measure,
    estimate, ci_low, ci_high, n, ci_method, warning). Rows: position_bias and swap_consistency,
    verbosity_bias, authority_bias, self_preference and self_preference_perplexity. A probe that does not
    apply or has no rows gives NaN with its reason in `warning`. A pointwise judge's scores of the same
    text are computed once across probes."""
    judge = judge if is_pairwise(judge) else _MemoJudge(judge)
    results = [position_bias(judge, samples, verifier, n_boot, seed),
               verbosity_bias(judge, samples, pad, n_boot, seed),
               authority_bias(judge, samples, AUTHORITY, n_boot, seed),
               self_preference(judge, samples, model, reference_column, verifier, n_boot, seed)]
    rows = []
    for result in results:
        rows.append(result)
        rows += [value for value in result.values() if isinstance(value, dict) and "probe" in value]
    return pd.DataFrame([{column: row.get(column) for column in _COLUMNS} for row in rows], columns=_COLUMNS)
