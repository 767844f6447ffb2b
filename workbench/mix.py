"""Data-mix policies of the self-learning loop: what each generation fine-tunes on.

    train_set = mix({"keep_real": 0.1}, accepted_by_generation, real=real_examples(prompts), seed=0)

`replace`, `accumulate`, `keep_real(f)` and `accumulate_subsample(B)` (Shumailov et al. 2024; Gerstgrasser
et al. 2024); the model-collapse experiment compares the first three at the same compute.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from .errors import InputDataError
from .store import Run

MIX_POLICIES = ("replace", "accumulate", "keep_real", "accumulate_subsample")


def parse_mix(policy) -> tuple[str, float | None]:
    """'replace' | 'accumulate' | {'keep_real': 0.1} | {'accumulate_subsample': 512} | 'keep_real(0.1)'."""
    if isinstance(policy, dict) and len(policy) == 1:
        (name, value), = policy.items()
    elif isinstance(policy, str) and "(" in policy and policy.endswith(")"):
        name, value = policy[:-1].split("(", 1)
        value = float(value)
    else:
        name, value = policy, None
    if name not in MIX_POLICIES or (name in ("keep_real", "accumulate_subsample")) != (value is not None):
        raise InputDataError(f"Unknown data-mix policy {policy!r}.",
                             "Use 'replace', 'accumulate', {'keep_real': 0.1} or {'accumulate_subsample': 512}.")
    if name == "keep_real" and not 0 <= float(value) < 1:
        raise InputDataError(f"keep_real fraction must be in [0, 1), got {value}.", "E.g. {'keep_real': 0.1}.")
    if name == "accumulate_subsample" and float(value) < 1:
        raise InputDataError(f"accumulate_subsample budget must be >= 1, got {value}.", "E.g. 512.")
    return name, None if value is None else float(value)


def mix(policy, accepted: list[pd.DataFrame], real: pd.DataFrame | None = None, seed: int = 0) -> pd.DataFrame:
    """The training set of the newest generation.

    accepted: the accepted samples of generations 0..g (oldest first); real: human data (prompt,
    completion, chat). Policies (Shumailov et al. 2024; Gerstgrasser et al. 2024):
      replace                   only generation g's accepted samples
      accumulate                all real data plus every generation's accepted samples
      keep_real(f)              generation g's accepted samples plus real rows re-sampled this generation
                                so that a share f of the training set is real
      accumulate_subsample(B)   B rows drawn (without replacement) from real + all accepted so far
    A `source` column says where each row came from ('real' or 'gen-XXX').
    """
    name, value = parse_mix(policy)
    columns = ["prompt", "completion", "chat", "finish_reason", "source"]

    def tagged(frame, source):
        frame = frame.copy()
        frame["source"] = source
        if "finish_reason" not in frame.columns:
            frame["finish_reason"] = None
        if "chat" not in frame.columns:
            frame["chat"] = True
        return frame[columns]

    synthetic = [tagged(frame, Run.generation_name(g)) for g, frame in enumerate(accepted)]
    real_rows = tagged(real, "real") if real is not None and len(real) else pd.DataFrame(columns=columns)
    rng = np.random.default_rng([seed, len(accepted)])  # re-sampled every generation, reproducibly
    if name == "replace":
        parts = synthetic[-1:]
    elif name == "accumulate":
        parts = [real_rows, *synthetic]
    elif name == "keep_real":
        newest = synthetic[-1] if synthetic else pd.DataFrame(columns=columns)
        want = int(round(value / (1 - value) * len(newest))) if value else 0
        if want and not len(real_rows):
            raise InputDataError("keep_real needs real data, and none was given.", "Pass real=... to mix().")
        take = rng.choice(len(real_rows), size=min(want, len(real_rows)), replace=False) if want else []
        parts = [newest, real_rows.iloc[sorted(take)]]
    else:
        pool = pd.concat([real_rows, *synthetic], ignore_index=True)
        take = rng.choice(len(pool), size=min(int(value), len(pool)), replace=False)
        parts = [pool.iloc[sorted(take)]]
    parts = [p for p in parts if len(p)]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


def real_examples(prompts: pd.DataFrame) -> pd.DataFrame:
    """Human data of a task as training examples: each prompt with its `reference` as the completion
    (corpus: the real continuation, with a leading space; arithmetic: the exact answer)."""
    if "reference" not in prompts.columns:
        raise InputDataError("These prompts have no `reference` column, so there is no real data to mix in.",
                             "Use a task with references (arithmetic, instructions, corpus) or pass real=None.")
    frame = prompts[prompts["reference"].notna()].copy()
    chat = frame["chat"].astype(bool) if "chat" in frame.columns else pd.Series(True, index=frame.index)
    frame["completion"] = [ref if is_chat else " " + str(ref).lstrip() for ref, is_chat in zip(frame["reference"], chat)]
    frame["finish_reason"] = np.where(chat, "stop", "length")  # a cut passage did not end by itself
    frame["chat"] = chat
    return frame[["prompt", "completion", "chat", "finish_reason"]].reset_index(drop=True)
