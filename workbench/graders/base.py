"""The grader protocol and `grade`, which adds one `score__<name>` column per grader.

A grader has a `name` and `score(samples) -> pd.Series` (index aligned with `samples`, NaN where it
cannot score a row). Given a run, `grade` stores each grader's scores under
`gen-XXX/scores/<name>/part-*.parquet` (sample_id, score) and reuses them: rows already scored by a
grader of the same name and settings are never scored again.
"""
from __future__ import annotations

import json
import time
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from ..errors import InputDataError
from ..store import score_column


class Grader(Protocol):
    name: str

    def score(self, samples: pd.DataFrame) -> pd.Series: ...


def grader_config(grader) -> dict:
    """The settings that identify a grader's scores (its public, simple attributes). Fitted results end
    in "_" (scikit-learn's convention, e.g. Realism.train_auc_) and are left out: they can differ in the
    last digits between processes and must not make a rerun look like a different configuration."""
    config = {"class": type(grader).__name__}
    for key, value in vars(grader).items():
        if not key.startswith("_") and not key.endswith("_") and isinstance(value, (str, int, float, bool, type(None), list, tuple, dict)):
            config[key] = value
    return json.loads(json.dumps(config, default=str))


def grade(samples: pd.DataFrame, graders: Sequence, run=None, generation: int = 0) -> pd.DataFrame:
    """Return a copy of `samples` with a column `score__<name>` per grader (stored in / reused from `run`).

    Graders run in order and each sees the score columns of the ones before it (a `Panel` combines them).
    A grader with `groupwise = True` (Consistency, PairwiseJudge) scores a row against the other samples of
    its prompt: it is given every row of a prompt that has any row left to score, so a resumed pass scores
    exactly as an uninterrupted one. A grader with `training_ids_` after scoring (a fitted Panel) has those
    rows stored as `trained_on`, so an audit never scores it on its own training rows.
    """
    if "sample_id" not in samples.columns and run is not None:
        raise InputDataError("Samples without a sample_id column cannot be stored in a run.",
                             "Grade the output of workbench.generate(), or pass run=None.")
    names = [g.name for g in graders]
    if len(set(names)) != len(names):
        raise InputDataError(f"Two graders share a name: {names}.", "Give each grader a distinct name=.")
    out = samples.copy()
    for grader in graders:
        column = score_column(grader.name)
        if run is None:
            out[column] = _checked(grader, grader.score(out), out)
            continue
        run.check_config(run.config_key("grade", grader.name, generation), grader_config(grader))
        table = run.scores_table(grader.name)
        stored = run.read(table, generation)
        known = dict(zip(stored["sample_id"], stored["score"])) if len(stored) else {}
        todo = out[~out["sample_id"].isin(known)]
        if len(todo):
            known.update(_score_and_store(grader, out, todo, run, table, generation))
        out[column] = out["sample_id"].map(known).astype(float).to_numpy()
    return out


def _score_and_store(grader, out: pd.DataFrame, todo: pd.DataFrame, run, table: str, generation: int) -> dict:
    """Score the rows in `todo` (with their prompts' other rows for a groupwise grader), store them as a
    part with its ledger line, and return sample_id -> score."""
    context = todo
    if getattr(grader, "groupwise", False) and "prompt_id" in out.columns:
        context = out[out["prompt_id"].isin(set(todo["prompt_id"]))]
    started = time.perf_counter()
    scores = _checked(grader, grader.score(context), context).loc[todo.index]
    seconds = time.perf_counter() - started
    part = pd.DataFrame({"sample_id": todo["sample_id"].to_numpy(), "score": scores.to_numpy(dtype=float)})
    trained = getattr(grader, "training_ids_", None)
    if trained is not None:
        part["trained_on"] = part["sample_id"].isin(set(trained)).to_numpy()
    run.append(table, part, generation, log=dict(
        stage="grade", generation=generation, grader=grader.name, items=len(todo),
        seconds=round(seconds, 3), items_per_s=round(len(todo) / max(seconds, 1e-9), 2),
        nan=int(scores.isna().sum()), **({"method": grader.method_} if hasattr(grader, "method_") else {})))
    return dict(zip(todo["sample_id"], scores.to_numpy(dtype=float)))


def scoring_method(run, grader: str = "judge", generation: int = 0) -> str | None:
    """How a grader's stored scores were read, from the run's ledger (SelfJudge.method_: "logits" for a
    local model, "logprobs" or "parsed" over a backend); None when the run does not say."""
    ledger = run.ledger()
    if ledger.empty or "method" not in ledger:
        return None
    mine = ledger[(ledger["stage"] == "grade") & (ledger["grader"] == grader) & (ledger["generation"] == generation)]
    methods = mine["method"].dropna()
    return str(methods.iloc[-1]) if len(methods) else None


def _checked(grader, scores, samples) -> pd.Series:
    scores = pd.Series(scores, index=samples.index) if not isinstance(scores, pd.Series) else scores
    if len(scores) != len(samples):
        raise InputDataError(f"Grader {grader.name!r} returned {len(scores)} scores for {len(samples)} samples.",
                             "A grader must return one score per row (NaN where it cannot score).")
    return pd.to_numeric(scores, errors="coerce").astype(float).set_axis(samples.index)


def require_columns(samples: pd.DataFrame, columns: Sequence[str], grader: str) -> None:
    missing = [c for c in columns if c not in samples.columns]
    if missing:
        raise InputDataError(f"Grader {grader!r} needs columns {missing}, which the samples lack.",
                             "Grade the output of workbench.generate() (it has prompt, completion, reference).")


def finite_or_nan(values) -> np.ndarray:
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, np.nan)
