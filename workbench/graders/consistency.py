"""Self-consistency as a grader: a sample scores the share of its prompt's samples that give its answer.

No labels needed, only K >= 2 samples per prompt. Sources:
  * Wang et al. 2023, "Self-Consistency Improves Chain of Thought Reasoning in Language Models" (ICLR):
    the answer most of K sampled solutions reach is more often right than any one greedy answer;
  * Huang et al. 2022, "Large Language Models Can Self-Improve": keep the samples that agree with the
    majority answer as training data, without labels (this grader's score, thresholded);
  * Zuo et al. 2025, "TTRL: Test-Time Reinforcement Learning": the majority vote over K samples as reward.

Answers come from an extractor: the task's own (`workbench.tasks.ANSWER_EXTRACTORS`, e.g. the final number
for arithmetic), a callable(completion) -> hashable, "text" (normalised text) or "embedding" (clusters of
paraphrases by MiniLM cosine similarity).
"""
from __future__ import annotations

import re
from typing import Callable

import numpy as np
import pandas as pd

from ..errors import InputDataError
from .base import require_columns

_EXTRACTOR_FIX = "Pass extractor='text' or 'embedding' or a callable(completion) -> answer (None for no answer)."


def normalised_text(completion: str) -> str | None:
    """The completion's words, lowercased, joined by single spaces (punctuation and extra whitespace
    dropped, so "Paris." and " paris" agree); None when it has no word at all."""
    words = re.findall(r"\w+", str(completion).lower())
    return " ".join(words) if words else None


class Consistency:
    """Per sample: the share of its prompt's K samples (itself included) whose extracted answer equals its own.

    extractor: None (the task's own, from the samples' `task` column), a callable(completion) -> hashable
    answer, "text" (identical `normalised_text`) or "embedding" (greedy clusters: in sample order, each sample
    not yet clustered starts a cluster that takes every unclustered sample of its prompt at cosine similarity
    >= `similarity` to it, MiniLM embeddings).

    A sample without an answer (the extractor returns None or NaN, an empty completion) scores 0.0: it gave
    nothing to agree with, and it still counts in its prompt's K, lowering the others' shares. A prompt with
    a single sample gets NaN (agreement with itself says nothing); `message_` says how many rows that hit.
    Fitted after `score`: `n_single_sample_prompts_`, `n_no_answer_`, `message_` and `majority_answer_`
    (prompt_id -> its most frequent answer, ties to the first seen; prompts with no answer left out), for
    the rows of the last call. The score is in [0, 1]; 1.0 means every sample of the prompt agrees.
    """

    groupwise = True  # a row is scored against its prompt's other rows: grade() passes whole prompts

    def __init__(self, extractor: str | Callable[[str], object] | None = None, similarity: float = 0.9,
                 name: str = "consistency"):
        if not (extractor is None or callable(extractor) or extractor in ("text", "embedding")):
            raise InputDataError(f"Consistency extractor {extractor!r} is not one it knows.",
                                 "Use None (the task's own), 'text', 'embedding' or a callable.")
        if not 0.0 < similarity <= 1.0:
            raise InputDataError(f"Consistency similarity must be in (0, 1], not {similarity}.",
                                 "Use e.g. 0.9 (cosine similarity of MiniLM embeddings).")
        self.name = name
        # recorded in the run's config by name: a callable is recorded as its __name__, as Verifier's check
        self.extractor = extractor if extractor is None or isinstance(extractor, str) else \
            getattr(extractor, "__name__", type(extractor).__name__)
        self.similarity = float(similarity)
        self._extract = extractor if callable(extractor) else None

    def score(self, samples: pd.DataFrame) -> pd.Series:
        require_columns(samples, ["prompt_id", "completion"], self.name)
        answers = self.answers(samples)
        scores, sizes = agreement(samples["prompt_id"], answers)
        self._describe(samples["prompt_id"], answers, sizes)
        return pd.Series(scores, index=samples.index, dtype=float)

    def answers(self, samples: pd.DataFrame) -> pd.Series:
        """Each row's answer (object Series aligned with `samples`; None where there is none)."""
        completions = samples["completion"]
        if self._extract is not None:
            values = [self._extract(c) for c in completions]
        elif self.extractor == "text":
            values = [normalised_text(c) for c in completions]
        elif self.extractor == "embedding":
            values = embedding_clusters(samples["prompt_id"], completions, self.similarity)
        else:
            values = _task_answers(samples, self.name)
        return pd.Series(values, index=samples.index, dtype=object)

    def _describe(self, prompt_ids: pd.Series, answers: pd.Series, sizes: np.ndarray) -> None:
        single = sizes == 1
        self.n_single_sample_prompts_ = int(single.sum())  # a single-sample prompt has one row
        missing = answers.isna().to_numpy()
        self.n_no_answer_ = int((missing & ~single).sum())
        self.majority_answer_ = majority_answers(prompt_ids, answers)
        notes = []
        if self.n_single_sample_prompts_:
            notes.append(f"{self.n_single_sample_prompts_} of {len(sizes)} rows got NaN: their prompt has a single "
                         "sample, and consistency needs at least 2 samples per prompt (generate with "
                         "n_per_prompt >= 2)")
        if self.n_no_answer_:
            notes.append(f"{self.n_no_answer_} rows gave no answer the extractor could read and scored 0.0")
        self.message_ = "; ".join(notes) + ("." if notes else "")


def agreement(prompt_ids: pd.Series, answers: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(score, prompt size) per row: the share of the row's prompt whose answer equals the row's, 0.0 for a
    row without an answer, NaN for a prompt of one row. Vectorised: one factorize and two group counts."""
    try:
        answer_codes, _ = pd.factorize(answers.to_numpy(dtype=object))  # None/NaN -> -1: no answer
    except TypeError as exc:
        raise InputDataError(f"Consistency: an extracted answer is not hashable ({exc}).",
                             "Make the extractor return a str, number or tuple (None for no answer).") from exc
    prompt_codes, _ = pd.factorize(prompt_ids.to_numpy(dtype=object))
    frame = pd.DataFrame({"p": prompt_codes, "a": answer_codes})
    sizes = frame.groupby("p")["a"].transform("size").to_numpy()
    same = frame.groupby(["p", "a"])["a"].transform("size").to_numpy()
    scores = same / sizes
    scores[answer_codes < 0] = 0.0
    scores[sizes == 1] = np.nan
    return scores.astype(float), sizes


def majority_answers(prompt_ids: pd.Series, answers: pd.Series) -> dict:
    """prompt_id -> its most frequent answer (ties: the first seen); prompts without any answer left out."""
    known = answers.notna().to_numpy()
    if not known.any():
        return {}
    codes, uniques = pd.factorize(answers.to_numpy(dtype=object)[known])
    frame = pd.DataFrame({"p": prompt_ids.to_numpy(dtype=object)[known], "a": codes})
    counts = frame.groupby(["p", "a"], sort=False).size().rename("n").reset_index()
    # codes follow first appearance, so sorting by count (descending) then code keeps the first seen on ties
    best = counts.sort_values(["n", "a"], ascending=[False, True], kind="stable").drop_duplicates("p")
    return dict(zip(best["p"], uniques[best["a"].to_numpy()]))


def _task_answers(samples: pd.DataFrame, grader: str) -> list:
    """Answers by each row's task's own extractor (`workbench.tasks.ANSWER_EXTRACTORS`)."""
    from ..tasks import ANSWER_EXTRACTORS, answer_extractor

    if "task" not in samples.columns:
        raise InputDataError(f"Consistency {grader!r} has no extractor and the samples have no 'task' column "
                             "to find the task's own.", _EXTRACTOR_FIX)
    tasks = samples["task"].to_numpy(dtype=object)
    extractors = {task: answer_extractor(task) for task in pd.unique(tasks)}
    missing = sorted(str(task) for task, fn in extractors.items() if fn is None)
    if missing:
        raise InputDataError(f"Consistency {grader!r}: task(s) {missing} have no answer extractor (only "
                             f"{sorted(ANSWER_EXTRACTORS)} do), so their answers cannot be compared.", _EXTRACTOR_FIX)
    return [extractors[task](completion) for task, completion in zip(tasks, samples["completion"])]


def embedding_clusters(prompt_ids: pd.Series, completions: pd.Series, similarity: float) -> list:
    """Per row, the text of its cluster's first member (so equal answers mean one cluster), None for an
    empty completion. Greedy per prompt, in row order: an unclustered row starts a cluster and takes every
    unclustered row of its prompt within `similarity` (cosine) of it."""
    from ..embeddings import embed

    texts = [str(c).strip() for c in completions]
    answers: list = [None] * len(texts)
    present = np.array([i for i, text in enumerate(texts) if text], dtype=int)
    if not len(present):
        return answers
    unique = sorted({texts[i] for i in present})
    vectors = dict(zip(unique, embed(unique)))  # each distinct text embedded once
    prompt_of = prompt_ids.to_numpy(dtype=object)[present]
    for positions in pd.Series(present).groupby(prompt_of, sort=False).indices.values():
        rows = present[np.sort(positions)]
        matrix = np.stack([vectors[texts[i]] for i in rows])
        sims = matrix @ matrix.T
        leader = np.full(len(rows), -1)
        for i in range(len(rows)):
            if leader[i] < 0:
                # a small tolerance: a text's similarity to itself is 1.0 only up to float32 rounding
                leader[(leader < 0) & (sims[i] >= similarity - 1e-6)] = i
        for i, row in enumerate(rows):
            answers[row] = texts[rows[leader[i]]]
    return answers
