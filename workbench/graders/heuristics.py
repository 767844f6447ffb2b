"""Cheap text checks: length, repetition, refusals, non-printable characters."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .base import require_columns

REFUSALS = ("i'm sorry", "i am sorry", "i cannot", "i can't", "as an ai", "i am unable", "i'm unable",
            "i apologize", "i do not have the ability", "i don't have the ability")


def heuristic_features(text: str, min_words: int = 3, max_words: int = 300) -> dict:
    """Each feature in [0, 1], 1 = good: length within bounds, share of non-repeated word 3-grams,
    no refusal phrase, share of printable characters."""
    words = re.findall(r"\w+", text.lower())
    n = len(words)
    length = 1.0 if min_words <= n <= max_words else (n / min_words if n < min_words else max_words / n)
    grams = [tuple(words[i:i + 3]) for i in range(max(0, n - 2))]
    repetition = len(set(grams)) / len(grams) if grams else 1.0
    refusal = 0.0 if any(phrase in text.lower() for phrase in REFUSALS) else 1.0
    printable = sum(ch.isprintable() or ch in "\n\t" for ch in text) / len(text) if text else 0.0
    return {"length": length, "repetition": repetition, "refusal": refusal, "printable": printable}


class Heuristics:
    """The product of the four heuristic features: 0 when any one fails outright (a refusal, an empty
    text), otherwise reduced by excess length, repeated 3-grams and non-printable characters."""

    def __init__(self, name: str = "heuristics", min_words: int = 3, max_words: int = 300):
        self.name, self.min_words, self.max_words = name, min_words, max_words

    def features(self, samples: pd.DataFrame) -> pd.DataFrame:
        require_columns(samples, ["completion"], self.name)
        return pd.DataFrame([heuristic_features(str(t), self.min_words, self.max_words)
                             for t in samples["completion"]], index=samples.index)

    def score(self, samples: pd.DataFrame) -> pd.Series:
        return pd.Series(np.prod(self.features(samples).to_numpy(), axis=1), index=samples.index, dtype=float)
