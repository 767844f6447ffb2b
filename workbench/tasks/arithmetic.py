"""Arithmetic word-free problems with exact integer answers: the verifiable task."""
from __future__ import annotations

import random

import pandas as pd

from ..errors import InputDataError

SYMBOLS = {"+": "+", "-": "-", "*": "*", "/": "/"}


def arithmetic(n: int = 100, digits: int = 2, operators: str = "+-*", seed: int = 0,
               template: str = "What is {a} {op} {b}? Answer with the number only.") -> pd.DataFrame:
    """`n` problems `a op b` with operands of `digits` digits; `/` only where the quotient is exact.

    The same (n, digits, operators, seed) always gives the same problems; `reference` holds the answer.
    """
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
    rows = []
    for index in range(n):
        op = rng.choice(operators)
        a, b = rng.randint(low, high), rng.randint(low, high)
        if op == "/":
            b = max(b, 1)
            a = b * rng.randint(max(low, 1), high)  # exact division: a is a multiple of b
            answer = a // b
        else:
            answer = {"+": a + b, "-": a - b, "*": a * b}[op]
        rows.append({"prompt_id": f"arith-{seed}-{index:05d}", "prompt": template.format(a=a, op=op, b=b),
                     "reference": str(answer), "task": "arithmetic", "chat": True,
                     "operand_a": a, "operand_b": b, "operator": op})
    return pd.DataFrame(rows)
