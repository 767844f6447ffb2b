"""Exact checks: the task's own answer key (arithmetic) or any callable you give."""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from .base import require_columns

_NUMBER = re.compile(r"(?<![\w.])[-\u2212]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\d])|(?<![\w.])[-\u2212]?\d+(?:\.\d+)?")


def parse_final_number(text: str) -> float | None:
    """The last number in a text: handles '1,234', '-5', '3.0', the unicode minus, trailing periods;
    ignores digits inside words (e.g. 'x2'). None when there is no number."""
    matches = _NUMBER.findall(str(text))
    if not matches:
        return None
    return float(matches[-1].replace(",", "").replace("\u2212", "-"))


def is_strict_answer(text: str) -> bool:
    """Strict format: the completion is the number alone (optionally with a final period)."""
    return bool(re.fullmatch(r"\s*[-\u2212]?\d[\d,]*(?:\.\d+)?\.?\s*", str(text)))


class Verifier:
    """1.0 when the completion's final number equals `reference`, else 0.0; NaN without a reference.

    strict=True also requires the completion to be the number alone. `check` replaces the default
    with your own callable(prompt, completion, reference) -> bool or float in [0, 1].
    """

    def __init__(self, name: str = "verifier", strict: bool = False,
                 check: Callable[[str, str, str], float] | None = None):
        self.name = name
        self.strict = strict
        self.check = getattr(check, "__name__", None) if check else None
        self._check = check

    def _one(self, prompt, completion, reference) -> float:
        if reference is None or (isinstance(reference, float) and np.isnan(reference)):
            return np.nan
        if self._check is not None:
            return float(self._check(prompt, completion, reference))
        if self.strict and not is_strict_answer(completion):
            return 0.0
        got, want = parse_final_number(completion), parse_final_number(str(reference))
        if got is None or want is None:
            return 0.0
        return float(abs(got - want) < 1e-9)

    def score(self, samples: pd.DataFrame) -> pd.Series:
        require_columns(samples, ["completion", "reference"], self.name)
        prompts = samples["prompt"] if "prompt" in samples.columns else [""] * len(samples)
        return pd.Series([self._one(p, c, r) for p, c, r in zip(prompts, samples["completion"], samples["reference"])],
                         index=samples.index, dtype=float)
