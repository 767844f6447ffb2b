"""Arithmetic word-free problems with exact integer answers: the verifiable task."""
from __future__ import annotations

import random

import pandas as pd

from ..errors import InputDataError
from .corpus import split_of

SYMBOLS = {"+": "+", "-": "-", "*": "*", "/": "/"}


def arithmetic(n: int = 100, digits: int = 2, operators: str = "+-*", seed: int = 0,
               template: str = "What is {a} {op} {b}? Answer with the number only.", split: str = "all",
               heldout_fraction: float = 0.5) -> pd.DataFrame:
    """`n` distinct problems `a op b` with operands of `digits` digits; `/` only where the quotient is exact.

    The same arguments always give the same problems; `reference` holds the answer. `split` ("train",
    "heldout" or "all") keeps only problems on that side of a fixed hash split, so problems used for
    training never appear in an evaluation, whatever the seeds (the self-learning loop relies on it).
    """
    if split not in ("train", "heldout", "all"):
        raise InputDataError(f"arithmetic: unknown split {split!r}.", "Use 'train', 'heldout' or 'all'.")
    if n <= 0:
        raise InputDataError(f"arithmetic: n must be positive, got {n}.", "Pass n >= 1.")
    if digits < 1:
        raise InputDataError(f"arithmetic: digits must be >= 1, got {digits}.", "Pass digits >= 1.")
    bad = [op for op in operators if op not in SYMBOLS]
    if bad or not operators:
        raise InputDataError(f"arithmetic: unsupported operators {bad or operators!r}.",
                             "Use a string made of '+', '-', '*', '/'.")
    rng = random.Random(seed)
    low, high = (0 if digits == 1 else 10 ** (digits - 1)), 10 ** digits - 1
    rows, seen, attempts = [], set(), 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise InputDataError(f"arithmetic: cannot draw {n} distinct problems with {digits} digit(s) and "
                                 f"operators {operators!r} (split {split!r}).", "Ask for fewer problems or use more digits.")
        index = len(rows)
        op = rng.choice(operators)
        a, b = rng.randint(low, high), rng.randint(low, high)
        if op == "/":
            b = max(b, 1)
            a = b * rng.randint(max(low, 1), high)  # exact division: a is a multiple of b
            answer = a // b
        else:
            answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        if (a, op, b) in seen or (split != "all" and split_of(f"{a} {op} {b}", heldout_fraction) != split):
            continue  # a repeated problem would repeat sample ids (they hash the prompt) and skew accuracy
        seen.add((a, op, b))
        rows.append({"prompt_id": f"arith-{seed}-{index:05d}", "prompt": template.format(a=a, op=op, b=b),
                     "reference": str(answer), "task": "arithmetic", "chat": True,
                     "operand_a": a, "operand_b": b, "operator": op,
                     "split": split_of(f"{a} {op} {b}", heldout_fraction)})
    return pd.DataFrame(rows)
