"""Prompt sources ("tasks"): each returns a prompts DataFrame with `prompt_id`, `prompt`, `task`,
`chat` (apply the chat template or continue raw text) and, where the task knows it, `reference`.

    get_task("arithmetic", n=200, digits=2)     # verifiable, exact answers
    get_task("instructions", n=100)             # self-instruct seeds in data/seeds/
    get_task("corpus", n=100)                   # continue real human text (CPython's own prose by default)
    get_task("file", path="my_prompts.jsonl")   # your own prompts (JSONL/CSV/parquet, a `prompt` column)
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import pandas as pd

from ..errors import InputDataError
from .arithmetic import arithmetic
from .corpus import corpus
from .files import load_prompts
from .instructions import instructions

TASKS: dict[str, Callable[..., pd.DataFrame]] = {
    "arithmetic": arithmetic,
    "instructions": instructions,
    "corpus": corpus,
    "file": load_prompts,
}


def _final_number(completion: str) -> float | None:
    # imported here, not at the top: the graders package imports tasks (Consistency), so a top-level import
    # of workbench.graders from here would be circular
    from ..graders.verifier import parse_final_number

    return parse_final_number(completion)


# Each task's answer extractor: completion -> a hashable answer (None when it gives none). Self-consistency
# (workbench.graders.Consistency) compares a prompt's samples by these answers; a task without an entry
# has free-form answers, which Consistency compares by text or embedding when told to.
ANSWER_EXTRACTORS: dict[str, Callable[[str], object]] = {
    "arithmetic": _final_number,
}


def answer_extractor(task: str) -> Callable[[str], object] | None:
    """The answer extractor of task `task` (see ANSWER_EXTRACTORS), or None when the task has none."""
    return ANSWER_EXTRACTORS.get(task)


def get_task(name: str, **params) -> pd.DataFrame:
    """Build the prompts of task `name` (or of a prompts file, when `name` is a path)."""
    if name not in TASKS and Path(name).suffix.lower() in (".jsonl", ".json", ".csv", ".parquet"):
        return load_prompts(name, **params)
    if name not in TASKS:
        raise InputDataError(f"Unknown task {name!r}.",
                             f"Use one of {sorted(TASKS)}, or the path of a JSONL/CSV/parquet prompts file.")
    return TASKS[name](**params)


__all__ = ["get_task", "TASKS", "ANSWER_EXTRACTORS", "answer_extractor", "arithmetic", "instructions", "corpus",
           "load_prompts"]
