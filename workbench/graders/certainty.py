"""Self-certainty: the generating model's confidence in its own answer, from one forward pass, no labels.

kind="self_certainty" (default) follows Kang et al. 2025, "Scalable Best-of-N Selection for Large Language
Models via Self-Certainty": at each completion position t the model's next-token distribution p_t is
compared with the uniform one, KL(U || p_t) = -log V - (1/V) sum_v log p_t(v) (V the vocabulary size), and
the sample's self-certainty is the mean over its completion positions. It reads the whole distribution, not
just the sampled token, so it rewards answers the model produced while sure of what came next. Kang et al.
report it selects better than token-level measures (perplexity, entropy) and, unlike self-consistency, needs
no extractable answer, so it also ranks open-ended completions.

kind="mean_logprob": exp(mean log p(completion token)), the confidence in the tokens actually chosen. That is
exactly `Perplexity` with the generating model as its reference model (Perplexity's default), so this kind
runs Perplexity's code; it is here so both confidences sit behind one grader.

Both condition on the chat-formatted prompt (or the raw prompt where the sample's `chat` is False) as
Perplexity does, and score the completion's tokens, not the stop token.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputDataError
from ..models import DEFAULT_MODEL, LoadedModel
from ..progress import progress
from .base import require_columns
from .model_graders import Perplexity, _ModelGrader, completion_sequences

KINDS = ("self_certainty", "mean_logprob")


class SelfCertainty(_ModelGrader):
    """The model's certainty about each completion, in [0, 1], higher = more confident (see the module
    docstring; pass the model that generated the samples).

    kind="self_certainty": the mean KL(U || p_t) over the completion's positions, x >= 0, mapped to
    x / (x + log V): monotone, 0 for a uniform (clueless) model, 0.5 when the mean KL equals log V, towards 1
    as the distributions sharpen. log V (10.8 for SmolLM2's 49,152 tokens) keeps the map free of a tuned
    constant; only the ranking matters for best-of-N, and the map keeps it. On short arithmetic and haiku
    answers SmolLM2-135M gave x = 6..10 (scores ~0.36..0.48).
    kind="mean_logprob": exp(mean token log-prob) of the completion, in (0, 1] (as `Perplexity`).

    Note: position t's distribution depends only on the tokens before t, so a one-token completion gets the
    same self-certainty whatever its token (the first position sees only the prompt); it separates answers
    of two or more tokens. NaN for an empty completion.
    """

    def __init__(self, model: str | LoadedModel = DEFAULT_MODEL, name: str = "certainty",
                 kind: str = "self_certainty", dtype: str = "fp32", quantize: str | None = None,
                 batch_size: int = 8):
        if kind not in KINDS:
            raise InputDataError(f"SelfCertainty kind must be one of {KINDS}, not {kind!r}.", "Pick one of them.")
        super().__init__(model, dtype, quantize, batch_size)
        self.name, self.kind = name, kind

    def score(self, samples: pd.DataFrame) -> pd.Series:
        require_columns(samples, ["prompt", "completion"], self.name)
        if self._backend is not None:
            raise InputDataError(f"SelfCertainty {self.name!r} needs the model's weights (every next-token "
                                 f"distribution), not a backend ({self.model}).",
                                 "Pass the local model that generated the samples (e.g. 'smollm2-135m').")
        if len(samples) == 0:
            return pd.Series([], dtype=float, index=samples.index)
        if self.kind == "mean_logprob":
            return Perplexity(self.loaded, name=self.name, dtype=self.dtype, quantize=self.quantize,
                              batch_size=self.batch_size).score(samples)
        sequences, starts = completion_sequences(self.loaded, samples)
        with progress(len(sequences), f"certainty:{self.name}", unit="items") as bar:
            stats = self.loaded.token_statistics(sequences, starts, self.batch_size, quantize=self.quantize,
                                                 on_batch=bar.update)
        log_v = float(np.log(self.loaded.model.config.vocab_size))
        values = [certainty(s["mean_logprob"], log_v) for s in stats]
        return pd.Series(values, index=samples.index, dtype=float)


def certainty(mean_logprob: np.ndarray, log_v: float) -> float:
    """x / (x + log V) for x = the mean over positions of KL(U || p_t) = -log V - mean_v log p_t(v);
    NaN without positions."""
    if len(mean_logprob) == 0:
        return float("nan")
    x = max(float(np.mean(-log_v - np.asarray(mean_logprob, dtype=float))), 0.0)  # KL >= 0; clip rounding
    return x / (x + log_v)
