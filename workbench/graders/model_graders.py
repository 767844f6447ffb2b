"""Graders that run a language model: the self-judge and perplexity under a reference model.

Both run the model through `LoadedModel.token_logprobs` / `next_token_logits`, which use the fast
engine's forward pass (shared prompt start run once, batched, logits only where needed) for
Llama-family models and a plain transformers forward otherwise. Default dtype fp32: bf16 and int8 flip
some of the judge's close Yes/No calls (README: int8 flipped 7%), and the dtype is part of the grader's
settings stored in the run.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputDataError
from ..models import DEFAULT_MODEL, LoadedModel, load_model
from ..progress import progress
from .base import require_columns

DEFAULT_RUBRIC = ("You are a strict grader. Read the task and the answer below, then decide whether the "
                  "answer is correct, complete and helpful.")
YES_NO_QUESTION = "Is the answer correct and helpful? Reply with Yes or No."
SCALE_QUESTION = "Rate the answer from {low} (useless) to {high} (excellent). Reply with one digit."


class _ModelGrader:
    def __init__(self, model, dtype, quantize, batch_size):
        from ..backends import get_backend, is_backend_spec

        # a backend (OpenAI-compatible server, llama.cpp) is recorded by its name: never a URL or a key
        self._backend = get_backend(model) if is_backend_spec(model) else None
        self.model = self._backend.name if self._backend else (
            model if isinstance(model, str) else getattr(model, "name", "model"))
        self.dtype, self.quantize, self.batch_size = dtype, quantize, batch_size
        self._loaded = model if isinstance(model, LoadedModel) else None

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            self._loaded = load_model(self.model, dtype=self.dtype)
        return self._loaded


class SelfJudge(_ModelGrader):
    """The model judges each sample from one forward pass over a rubric prompt.

    mode="yes_no": P("Yes") renormalised over the Yes/No answer tokens, in [0, 1].
    mode="scale": the expected rating over the digit tokens low..high (single digits), mapped to [0, 1].
    The rubric comes first in the prompt so its tokens (and the system turn) are computed once for all items.
    """

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, name: str = "judge", mode: str = "yes_no",
                 rubric: str = DEFAULT_RUBRIC, low: int = 1, high: int = 5, dtype: str = "fp32",
                 quantize: str | None = None, batch_size: int = 32):
        if mode not in ("yes_no", "scale"):
            raise InputDataError(f"SelfJudge mode must be 'yes_no' or 'scale', not {mode!r}.", "Pick one of the two.")
        if mode == "scale" and not 0 <= low < high <= 9:
            raise InputDataError(f"SelfJudge scale {low}..{high} needs single digits.",
                                 "Use a scale within 0..9, e.g. low=1, high=5 (two-digit ratings are two tokens).")
        super().__init__(model, dtype, quantize, batch_size)
        self.name, self.mode, self.rubric, self.low, self.high = name, mode, rubric, low, high

    def prompt_text(self, prompt: str, completion: str) -> str:
        question = YES_NO_QUESTION if self.mode == "yes_no" else SCALE_QUESTION.format(low=self.low, high=self.high)
        return f"{self.rubric}\n\nTask: {prompt}\n\nAnswer: {completion}\n\n{question}"

    def prompt_ids(self, prompt: str, completion: str) -> list[int]:
        return self.loaded.encode(self.prompt_text(prompt, completion), chat=True)

    def candidate_ids(self) -> tuple[list[int], list[int]] | list[int]:
        tokenizer = self.loaded.tokenizer
        first = lambda word: tokenizer.encode(word, add_special_tokens=False)[0]  # noqa: E731
        if self.mode == "yes_no":
            return sorted({first(w) for w in ("Yes", " Yes", "yes")}), sorted({first(w) for w in ("No", " No", "no")})
        return [first(str(d)) for d in range(self.low, self.high + 1)]

    def logits(self, sequences: list[list[int]]):
        with progress(len(sequences), f"judge:{self.name}", unit="items") as bar:
            return self.loaded.next_token_logits(sequences, self.batch_size, quantize=self.quantize,
                                                 on_batch=bar.update)

    def score(self, samples: pd.DataFrame) -> pd.Series:
        import torch

        require_columns(samples, ["prompt", "completion"], self.name)
        if len(samples) == 0:
            return pd.Series([], dtype=float, index=samples.index)
        if self._backend is not None:
            return self._score_with_backend(samples)
        self.method_ = "logits"  # the full next-token distribution
        sequences = [self.prompt_ids(p, c) for p, c in zip(samples["prompt"], samples["completion"])]
        logits = self.logits(sequences)
        if self.mode == "yes_no":
            yes, no = self.candidate_ids()
            log_yes, log_no = torch.logsumexp(logits[:, yes], -1), torch.logsumexp(logits[:, no], -1)
            scores = torch.sigmoid(log_yes - log_no).numpy()
        else:
            probs = torch.softmax(logits[:, self.candidate_ids()], dim=-1).numpy()
            ratings = np.arange(self.low, self.high + 1)
            scores = (probs @ ratings - self.low) / (self.high - self.low)
        return pd.Series(scores.astype(float), index=samples.index)

    def _score_with_backend(self, samples: pd.DataFrame) -> pd.Series:
        """Over a backend: the first answer token's top logprobs where the server returns them (the same
        P(Yes) / expected rating as locally, over the candidates it lists), else the rating parsed from the
        greedy reply. `method_` says which: "logprobs", "parsed" or "mixed (N% logprobs)"."""
        from ..backends import Request
        from ..sampling import run_requests

        requests = [Request(i, self.prompt_text(p, c), True, None, 0, 4, 0.0, 1.0, 0, logprobs=20)
                    for i, (p, c) in enumerate(zip(samples["prompt"], samples["completion"]))]
        scores, used_logprobs = np.full(len(requests), np.nan), 0
        with progress(len(requests), f"judge:{self.name}", unit="items") as bar:
            for done in run_requests(self._backend, requests):
                value = self._from_logprobs(done.top_logprobs)
                used_logprobs += value is not None
                scores[done.key] = value if value is not None else self._parse(done.text)
                bar.update(1)
        share = used_logprobs / len(requests)
        self.method_ = "logprobs" if share == 1 else "parsed" if share == 0 else f"mixed ({100 * share:.0f}% logprobs)"
        return pd.Series(scores, index=samples.index)

    def _from_logprobs(self, top: list) -> float | None:
        by_word: dict[str, list[float]] = {}
        for token, logprob in top:
            by_word.setdefault(token.strip().lower(), []).append(logprob)
        if self.mode == "yes_no":
            return two_way_probability(by_word, "yes", "no")
        ratings = np.arange(self.low, self.high + 1)
        logps = np.array([np.logaddexp.reduce(by_word[str(r)]) if str(r) in by_word else -np.inf for r in ratings])
        if not np.isfinite(logps).any():
            return None
        probs = np.exp(logps - logps.max())
        return float((probs / probs.sum()) @ ratings - self.low) / (self.high - self.low)

    def _parse(self, text: str) -> float:
        import re

        text = (text or "").strip().lower()
        if self.mode == "yes_no":
            return 1.0 if text.startswith("yes") else 0.0 if text.startswith("no") else np.nan
        digit = re.search(r"\d", text)
        if digit and self.low <= int(digit.group()) <= self.high:
            return (int(digit.group()) - self.low) / (self.high - self.low)
        return np.nan


class Perplexity(_ModelGrader):
    """exp(mean log-probability of the completion's tokens given its prompt) under a reference model,
    in (0, 1]: 1 / perplexity (higher = more expected by the reference model). Default: the base model."""

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, name: str = "perplexity", dtype: str = "fp32",
                 quantize: str | None = None, batch_size: int = 8):
        super().__init__(model, dtype, quantize, batch_size)
        self.name = name

    def score(self, samples: pd.DataFrame) -> pd.Series:
        require_columns(samples, ["prompt", "completion"], self.name)
        if self._backend is not None:
            raise InputDataError(f"Perplexity {self.name!r} needs the reference model's weights, not a backend "
                                 f"({self.model}): servers do not return the log-probability of given text.",
                                 "Use a local model as the reference (e.g. 'smollm2-135m' or the GGUF file itself).")
        sequences, starts = completion_sequences(self.loaded, samples)
        with progress(len(sequences), f"perplexity:{self.name}", unit="items") as bar:
            logprobs = self.loaded.token_logprobs(sequences, starts, self.batch_size, quantize=self.quantize,
                                             on_batch=bar.update)
        return pd.Series([float(np.exp(lp.mean())) if len(lp) else np.nan for lp in logprobs], index=samples.index)


def completion_sequences(loaded: LoadedModel, samples: pd.DataFrame) -> tuple[list[list[int]], list[int]]:
    """Prompt + completion token ids per row (the chat-formatted prompt where the sample's `chat` is True),
    and where each completion starts: what Perplexity and SelfCertainty score."""
    chats = samples["chat"] if "chat" in samples.columns else [True] * len(samples)
    sequences, starts = [], []
    for prompt, completion, chat in zip(samples["prompt"], samples["completion"], chats):
        prompt_ids = loaded.encode(prompt, bool(chat))
        sequences.append(prompt_ids + loaded.tokenizer.encode(str(completion), add_special_tokens=False))
        starts.append(len(prompt_ids))
    return sequences, starts


def two_way_probability(logprobs_by_word: dict[str, list[float]], first: str, second: str) -> float | None:
    """P(first) renormalised over first/second from a reply's first-token top logprobs, grouped by the word
    each token spells (several tokens can spell one word, " Yes" and "Yes"); None when neither appears.
    The self-judge's Yes/No and the pairwise judge's A/B over a backend."""
    positive, negative = logprobs_by_word.get(first), logprobs_by_word.get(second)
    if not positive and not negative:
        return None
    lse = lambda values: float(np.logaddexp.reduce(values)) if values else -np.inf  # noqa: E731
    return float(1 / (1 + np.exp(lse(negative) - lse(positive))))
