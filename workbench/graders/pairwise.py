"""A pairwise judge: the model compares two answers to one prompt, and each sample's score is its
Bradley-Terry strength among the samples of its prompt.

Why pairwise: a small judge that rates answers one at a time (SelfJudge) drifts with the answer's
length and style; asked which of two answers is better, it only has to rank them (MT-Bench / Chatbot
Arena, Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena", NeurIPS D&B).
The same paper measures the judge's position bias (it prefers the answer shown first), so every pair is
judged in both orders and the two verdicts are averaged; how often the orders agree is recorded
(`position_consistency_`), and so is the mean P(first wins) (`p_first_`).

One forward pass per order: P(A) is the next-token probability of "A" renormalised over the first tokens
of "A" / "B" (with and without a leading space), as SelfJudge reads Yes / No. The rubric comes first in
the prompt so the engine's shared-prefix path computes it (and the system turn) once per call.

Per prompt, the soft wins P(a beats b) of the compared pairs are fitted with a Bradley-Terry model
(Bradley & Terry 1952, "Rank Analysis of Incomplete Block Designs"; fitted by Newton's method on the
log-strengths with a Gaussian prior, as in Hunter 2004, "MM algorithms for generalized Bradley-Terry
models", so a sample that won every comparison still gets a finite strength).
The score of sample i is sigmoid(theta_i - mean(theta)): the BT probability that it beats an opponent of
the prompt's average strength. Scores are relative to the prompt's other samples: a prompt whose answers
are all wrong still has scores around 0.5 (use SelfJudge or a Verifier for an absolute grade).
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import pandas as pd

from ..errors import InputDataError
from ..models import DEFAULT_MODEL, LoadedModel
from ..progress import progress
from .base import require_columns
from .model_graders import _ModelGrader, two_way_probability

DEFAULT_PAIRWISE_RUBRIC = ("You are a strict grader. Read the task and the two answers below, then decide which "
                           "answer is more correct, complete and helpful.")
PAIRWISE_QUESTION = "Which answer is better? Reply with A or B."
# Gaussian prior on the BT log-strengths (precision 0.1, i.e. variance 10): worth less than half a
# comparison against an equal opponent (whose curvature is 0.25), so it only matters where the data
# leave a strength unbounded (a sample that won every comparison).
BT_PRIOR = 0.1
# p_a is snapped to this grid so that 1 - p is exact in float64: compare(b, a) is then 1 - compare(a, b)
# bit for bit (2**-40 ~ 1e-12, far below the float32 forward's precision).
_GRID = 2.0 ** 40
_VERDICT = re.compile(r"^\W*(?:answer\s+)?([AB])\b", re.IGNORECASE)


class PairwiseJudge(_ModelGrader):
    """Scores each sample by comparing it with `opponents` other samples of its prompt (both orders).

    Public pieces: `prob_first(prompts, first, second)` (P(the answer shown first wins), one forward pass
    each), `compare(prompts, a, b)` (both orders, symmetrised), `plan(samples)` (the pairs `score` compares)
    and `score(samples)` (per prompt, the BT win probability against an average opponent; NaN for a prompt
    with one sample). After `score`: `position_consistency_`, `p_first_`, `n_comparisons_`,
    `n_single_sample_prompts_`, `message_`, `method_` ("logits" locally; "logprobs" / "parsed" over a backend).
    """

    groupwise = True  # grade() gives it every row of a prompt, so a resumed pass compares the same pairs

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, name: str = "pairwise", opponents: int = 3,
                 dtype: str = "fp32", quantize: str | None = None, batch_size: int = 32, seed: int = 0,
                 rubric: str = DEFAULT_PAIRWISE_RUBRIC):
        if not isinstance(opponents, (int, np.integer)) or isinstance(opponents, bool) or opponents < 1:
            raise InputDataError(f"PairwiseJudge opponents must be an integer >= 1, not {opponents!r}.",
                                 "Use e.g. opponents=3 (each sample is compared with 3 others of its prompt).")
        super().__init__(model, dtype, quantize, batch_size)
        self.name, self.opponents, self.seed, self.rubric = name, int(opponents), int(seed), rubric
        self._replies = [0, 0]  # backend replies read from logprobs / all, in the current pass (method_)

    # ------------------------------------------------------------------ prompts and answer tokens
    def prompt_text(self, prompt: str, first: str, second: str) -> str:
        return f"{self.rubric}\n\nTask: {prompt}\n\nAnswer A: {first}\n\nAnswer B: {second}\n\n{PAIRWISE_QUESTION}"

    def candidate_ids(self) -> tuple[list[int], list[int]]:
        """First token ids of "A" and of "B", with and without a leading space. Lower-case "a" is left out:
        it is the article, so its probability says nothing about the verdict."""
        tokenizer = self.loaded.tokenizer
        first = lambda word: tokenizer.encode(word, add_special_tokens=False)[0]  # noqa: E731
        a, b = {first(w) for w in ("A", " A")}, {first(w) for w in ("B", " B")}
        if not a - b or not b - a:
            raise InputDataError("The tokenizer gives 'A' and 'B' the same first token.",
                                 "Use a model whose tokenizer has single tokens for the letters A and B.")
        return sorted(a - b), sorted(b - a)  # a shared first token (e.g. a bare space) would favour neither

    # ------------------------------------------------------------------ one order, one forward pass
    def prob_first(self, prompts, first, second) -> np.ndarray:
        """P(the answer shown first wins) per item, one forward pass each (lists of equal length).
        NaN where a backend's reply was no verdict. Sets `method_`."""
        prompts, first, second = list(prompts), list(first), list(second)
        if not len(prompts) == len(first) == len(second):
            raise InputDataError(f"prob_first got {len(prompts)} prompts, {len(first)} first and {len(second)} "
                                 "second answers.", "Pass three lists of equal length.")
        texts = [self.prompt_text(p, a, b) for p, a, b in zip(prompts, first, second)]
        self._replies = [0, 0]  # backend replies read from logprobs / all replies, this pass
        with progress(len(texts), f"judge:{self.name}", unit="items") as bar:
            return self._first_probs(texts, bar.update)

    def _first_probs(self, texts: list[str], on_batch) -> np.ndarray:
        if not texts:  # nothing asked: `method_` keeps what the last pass used
            return np.zeros(0)
        if self._backend is not None:
            return self._first_probs_backend(texts, on_batch)
        import torch

        self.method_ = "logits"  # the full next-token distribution
        a, b = self.candidate_ids()
        out = []
        # chunks bound the [items, vocab] logits tensor (1024 x 49k floats = 200 MB); each chunk still
        # computes its shared prefix once
        for start in range(0, len(texts), 1024):
            sequences = [self.loaded.encode(t, chat=True) for t in texts[start:start + 1024]]
            logits = self.loaded.next_token_logits(sequences, self.batch_size, quantize=self.quantize,
                                                   on_batch=on_batch)
            out.append(torch.sigmoid(torch.logsumexp(logits[:, a], -1) - torch.logsumexp(logits[:, b], -1)))
        return torch.cat(out).double().numpy()

    def _first_probs_backend(self, texts: list[str], on_batch) -> np.ndarray:
        """The first answer token's top logprobs where the server returns them, else "A" / "B" parsed from
        the greedy reply (as SelfJudge._score_with_backend). `method_`: "logprobs", "parsed" or "mixed"."""
        from ..backends import Request
        from ..sampling import run_requests

        requests = [Request(i, t, True, None, 0, 4, 0.0, 1.0, 0, logprobs=20) for i, t in enumerate(texts)]
        probs = np.full(len(requests), np.nan)
        for done in run_requests(self._backend, requests):
            value = a_from_logprobs(done.top_logprobs)
            self._replies[0] += value is not None
            self._replies[1] += 1
            probs[done.key] = value if value is not None else parse_verdict(done.text)
            on_batch(1)
        # over the whole pass (score makes one call per prompt), not only this call's replies
        share = self._replies[0] / self._replies[1]
        self.method_ = "logprobs" if share == 1 else "parsed" if share == 0 else f"mixed ({100 * share:.0f}% logprobs)"
        return probs

    # ------------------------------------------------------------------ both orders
    def compare(self, prompts, a, b) -> pd.DataFrame:
        """Each pair in both orders: p_ab = P(a wins | a first), p_ba = P(the first wins | b first),
        p_a = (p_ab + 1 - p_ba) / 2 (position-debiased), consistent = both orders pick the same winner."""
        prompts, a, b = list(prompts), list(a), list(b)
        self._replies = [0, 0]
        passes = 2 * sum(str(x) != str(y) for x, y in zip(a, b))  # identical answers need no pass
        with progress(passes, f"judge:{self.name}", unit="items") as bar:
            return self._compare(prompts, a, b, bar.update)

    def _compare(self, prompts: list, a: list, b: list, on_batch) -> pd.DataFrame:
        if not len(prompts) == len(a) == len(b):
            raise InputDataError(f"compare got {len(prompts)} prompts, {len(a)} a and {len(b)} b answers.",
                                 "Pass three lists of equal length.")
        # identical answers tie by definition: no forward pass, and no position-bias noise in their score
        same = np.array([str(x) == str(y) for x, y in zip(a, b)], dtype=bool)
        # each pair runs in one canonical orientation, so the forward pass (batch composition included,
        # hence its last float bits) does not depend on which answer the caller named a
        flip = np.array([str(x) > str(y) for x, y in zip(a, b)], dtype=bool)
        run = np.flatnonzero(~same)
        x = [b[i] if flip[i] else a[i] for i in run]
        y = [a[i] if flip[i] else b[i] for i in run]
        p = [prompts[i] for i in run]
        probs = self._first_probs([self.prompt_text(*t) for t in zip(p + p, x + y, y + x)], on_batch)
        p_xy, p_yx = probs[:len(run)], probs[len(run):]
        p_ab, p_ba = np.full(len(a), np.nan), np.full(len(a), np.nan)
        p_ab[run] = np.where(flip[run], p_yx, p_xy)
        p_ba[run] = np.where(flip[run], p_xy, p_yx)
        return pd.DataFrame({"p_ab": p_ab, "p_ba": p_ba, "p_a": _symmetrised(p_ab, p_ba, same),
                             "consistent": same | ((p_ab >= 0.5) == (p_ba < 0.5)) & np.isfinite(p_ab + p_ba)})

    # ------------------------------------------------------------------ scoring samples
    def plan(self, samples: pd.DataFrame) -> pd.DataFrame:
        """The pairs `score` compares, one row per unordered pair: group (the prompt key), a and b (index
        labels of `samples`). Per prompt, each sample draws min(opponents, others) opponents without
        replacement from a generator seeded by (seed, prompt key), so the draw does not depend on which
        other prompts are in the call; a pair drawn from both sides is compared once."""
        rows = []
        for key, labels in _groups(samples):
            rng = np.random.default_rng([self.seed, _stable_int(key)])
            pairs = set()
            for i in range(len(labels)):
                others = [j for j in range(len(labels)) if j != i]
                for j in rng.choice(others, size=min(self.opponents, len(others)), replace=False):
                    pairs.add((min(i, int(j)), max(i, int(j))))
            rows += [(key, labels[i], labels[j]) for i, j in sorted(pairs)]
        return pd.DataFrame(rows, columns=["group", "a", "b"])

    def score(self, samples: pd.DataFrame) -> pd.Series:
        require_columns(samples, ["prompt", "completion"], self.name)
        frame = samples.reset_index(drop=True)  # positions as labels: robust to a repeated index
        scores = np.full(len(frame), np.nan)
        groups = dict(_groups(frame))
        plan = self.plan(frame)
        self._replies = [0, 0]
        if self._backend is None:
            self.method_ = "logits"  # the full next-token distribution
        compared = []
        texts = frame["completion"].astype(str).to_numpy()
        passes = 2 * int((texts[plan["a"].to_numpy(int)] != texts[plan["b"].to_numpy(int)]).sum())
        with progress(passes, f"judge:{self.name}", unit="items") as bar:
            # one engine call per prompt: its shared prefix then covers the task too, and a prompt's
            # numbers do not depend on which other prompts are in this pass (a resumed grade() is exact)
            for key, pairs in plan.groupby("group", sort=False):
                a, b = pairs["a"].to_numpy(), pairs["b"].to_numpy()
                table = self._compare(list(frame["prompt"].iloc[a]), list(frame["completion"].iloc[a]),
                                      list(frame["completion"].iloc[b]), bar.update)
                labels = groups[key]
                where = {label: k for k, label in enumerate(labels)}
                i, j = np.array([where[x] for x in a]), np.array([where[x] for x in b])
                scores[labels] = bt_scores(len(labels), i, j, table["p_a"].to_numpy())
                compared.append(table)
        self._record(pd.concat(compared) if compared else pd.DataFrame(columns=["p_ab", "p_ba", "consistent"]),
                     sum(len(labels) == 1 for labels in groups.values()))
        return pd.Series(scores, index=samples.index)

    def _record(self, table: pd.DataFrame, single: int) -> None:
        """Fitted statistics of the last `score` (names end in "_": not part of the recorded settings)."""
        judged = table[np.isfinite(table["p_ab"].astype(float) + table["p_ba"].astype(float))]
        self.n_comparisons_ = int(len(judged))  # pairs judged by the model, each in both orders
        self.position_consistency_ = float(judged["consistent"].mean()) if len(judged) else float("nan")
        firsts = np.concatenate([judged["p_ab"].to_numpy(float), judged["p_ba"].to_numpy(float)])
        self.p_first_ = float(firsts.mean()) if len(firsts) else float("nan")
        self.n_single_sample_prompts_ = int(single)
        self.message_ = (f"{single} prompt(s) had a single sample: a pairwise judge has nothing to compare it with, "
                         "so its score is NaN (generate n_per_prompt >= 2 to score them)." if single else "")


# ---------------------------------------------------------------------- helpers (shareable)
def _symmetrised(p_ab: np.ndarray, p_ba: np.ndarray, same: np.ndarray) -> np.ndarray:
    """P(a beats b) = (p_ab + 1 - p_ba) / 2, written as 0.5 + d with d snapped to a 2**-40 grid by
    round-half-even (odd in d): swapping a and b negates d exactly, and 0.5 +- d is exact on the grid.
    Where one order has no verdict (a backend's unparsable reply) the other order alone is used."""
    with np.errstate(invalid="ignore"):
        d = np.round((p_ab - p_ba) / 2 * _GRID) / _GRID
    one = np.where(np.isfinite(p_ab), p_ab, 1 - p_ba)  # NaN where neither order gave a verdict
    return np.where(same, 0.5, np.where(np.isfinite(d), 0.5 + d, one))


def a_from_logprobs(top: list) -> float | None:
    """P("A") renormalised over A/B from a first token's top logprobs [(token, logprob), ...]; None when
    neither letter is among them. Exact "A"/"B" after stripping spaces only (not the article "a")."""
    by_letter: dict[str, list[float]] = {}
    for token, logprob in top:
        if token.strip() in ("A", "B"):
            by_letter.setdefault(token.strip(), []).append(logprob)
    return two_way_probability(by_letter, "A", "B")


def parse_verdict(text: str) -> float:
    """1.0 for a reply that opens with "A" (or "Answer A"), 0.0 for "B", NaN otherwise."""
    match = _VERDICT.match((text or "").strip())
    return np.nan if match is None else 1.0 if match.group(1).upper() == "A" else 0.0


def _groups(samples: pd.DataFrame) -> list[tuple[str, list]]:
    """(prompt key, index labels) per prompt, in first-seen order; labels sorted by sample_id where there is
    one, so the pairs drawn do not depend on the row order grade() passes."""
    key = samples["prompt_id"] if "prompt_id" in samples.columns else samples["prompt"]
    out = []
    for value, part in samples.groupby(key.astype(str), sort=False):
        labels = list(part.sort_values("sample_id", kind="stable").index if "sample_id" in part else part.index)
        out.append((value, labels))
    return out


def _stable_int(key) -> int:
    """A process-independent integer for a prompt key (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(str(key).encode()).digest()[:8], "little")


def bt_scores(n: int, i: np.ndarray, j: np.ndarray, p: np.ndarray, prior: float = BT_PRIOR) -> np.ndarray:
    """Per item, sigmoid(theta - mean theta) of the Bradley-Terry log-strengths fitted to soft wins
    p[k] = P(item i[k] beats item j[k]); NaN for an item in no pair with a finite p."""
    keep = np.isfinite(p)
    theta = bradley_terry(n, i[keep], j[keep], p[keep], prior)
    seen = np.zeros(n, dtype=bool)
    seen[i[keep]] = seen[j[keep]] = True
    return np.where(seen, 1 / (1 + np.exp(-(theta - theta.mean()))), np.nan)


def bradley_terry(n: int, i: np.ndarray, j: np.ndarray, p: np.ndarray, prior: float = BT_PRIOR,
                  iterations: int = 50) -> np.ndarray:
    """Log-strengths theta maximising sum_k p_k log s(theta_i - theta_j) + (1 - p_k) log s(theta_j - theta_i)
    - prior / 2 * |theta|^2 (s the sigmoid). Newton's method: the objective is strictly concave, so it
    converges in a few steps from 0; the prior keeps an undefeated sample finite and centres theta at 0."""
    i, j, p = np.asarray(i, int), np.asarray(j, int), np.asarray(p, float)
    theta = np.zeros(n)
    for _ in range(iterations):
        s = 1 / (1 + np.exp(-(theta[i] - theta[j])))
        grad = -prior * theta
        np.add.at(grad, i, p - s)
        np.add.at(grad, j, s - p)
        w = s * (1 - s)
        hessian = prior * np.eye(n)  # minus the Hessian: the prior plus the comparisons' weighted Laplacian
        np.add.at(hessian, (i, i), w)
        np.add.at(hessian, (j, j), w)
        np.add.at(hessian, (i, j), -w)
        np.add.at(hessian, (j, i), -w)
        step = np.linalg.solve(hessian, grad)
        theta += step
        if np.abs(step).max(initial=0.0) < 1e-10:
            break
    return theta
