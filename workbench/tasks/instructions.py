"""Self-instruct style prompts from the project's seed tasks (data/seeds/instructions.jsonl)."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd

from ..errors import InputDataError

SEEDS = Path(__file__).resolve().parents[2] / "data" / "seeds" / "instructions.jsonl"

NEW_TASK_TEMPLATE = ("Here are some example tasks:\n{examples}\n"
                     "Write one new task that is different from all of these. Reply with the task only.")


def load_seeds(path: str | Path = SEEDS) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"Seed file {path} does not exist.",
                             "Run from a checkout of the workbench repository, or pass seeds_path=.")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return pd.DataFrame(rows)


def instructions(n: int | None = None, mode: str = "answer", seed: int = 0, k_examples: int = 3,
                 seeds_path: str | Path = SEEDS) -> pd.DataFrame:
    """Prompts from the seed tasks.

    mode="answer": the seed instruction (and its input) is the prompt; `reference` is the seed answer.
    mode="new_task": show `k_examples` random seeds and ask for a new task (self-instruct, Wang et al. 2023).
    `n` prompts (default: one per seed), drawn in a seeded order, cycling when n exceeds the seeds.
    """
    seeds = load_seeds(seeds_path)
    if mode not in ("answer", "new_task"):
        raise InputDataError(f"instructions: unknown mode {mode!r}.", "Use mode='answer' or mode='new_task'.")
    n = len(seeds) if n is None else n
    if n <= 0:
        raise InputDataError(f"instructions: n must be positive, got {n}.", "Pass n >= 1.")
    rng = random.Random(seed)
    order = list(range(len(seeds)))
    rng.shuffle(order)
    rows = []
    for index in range(n):
        seed_row = seeds.iloc[order[index % len(order)]]
        if mode == "answer":
            prompt = seed_row["instruction"] + (f"\n\n{seed_row['input']}" if seed_row.get("input") else "")
            reference = seed_row["output"]
        else:
            picks = rng.sample(range(len(seeds)), k_examples)
            examples = "\n".join(f"{i + 1}. {seeds.iloc[p]['instruction']}" for i, p in enumerate(picks))
            prompt, reference = NEW_TASK_TEMPLATE.format(examples=examples), None
        rows.append({"prompt_id": f"instr-{mode}-{seed}-{index:05d}", "prompt": prompt, "reference": reference,
                     "task": "instructions", "chat": True, "category": seed_row["category"],
                     "seed_id": seed_row["id"]})
    return pd.DataFrame(rows)
