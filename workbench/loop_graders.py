"""The graders of the self-learning loop, made from the names in its config (`graders: [verifier, judge, ...]`):
the model's own judges, the loop's `panel` (a logistic regression over self-graders fitted on a few verifier
labels) and the `realism` machine-text detector with the real text it compares against."""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import pandas as pd

from .errors import InputDataError

if TYPE_CHECKING:
    from .loop_config import LoopConfig

PAIRWISE_OPPONENTS = 2  # `pairwise`: each sample meets this many others of its prompt, in both orders


def _graders(names: list[str], loaded, seed: int = 0, real_texts=None) -> list:
    """The graders named in the loop's config, in its order. `panel` is a logistic regression over the
    self-graders listed before it (consistency, pairwise, judge, certainty), fitted on at most 32 labels of
    the lenient `verifier` (drawn with `seed`); the config's check makes sure they all run before it.
    `realism` is the machine-text detector: real texts (`real_texts()`, called only then) against this
    generation's samples, cross-fitted so no sample is scored by a classifier that saw it."""
    from .graders import (Consistency, Heuristics, PairwiseJudge, Perplexity, Realism, SelfCertainty, SelfJudge,
                          Verifier)
    from .loop_config import PANEL_INPUTS

    makers = {"verifier": lambda: Verifier(), "verifier_strict": lambda: Verifier(name="verifier_strict", strict=True),
              "judge": lambda: SelfJudge(model=loaded), "perplexity": lambda: Perplexity(model=loaded),
              "heuristics": lambda: Heuristics(), "consistency": lambda: Consistency(),
              "pairwise": lambda: PairwiseJudge(model=loaded, opponents=PAIRWISE_OPPONENTS),
              "certainty": lambda: SelfCertainty(model=loaded),
              "panel": lambda: _loop_panel()(graders=[g for g in names if g in PANEL_INPUTS], how="logistic",
                                         labels="verifier", n_labels=32, seed=seed),
              "realism": lambda: Realism(real_texts(), seed=seed)}
    return [makers[name]() for name in names]


@functools.lru_cache(maxsize=None)
def _loop_panel():
    """The class of the loop's `panel` (built on first use: the graders import the model stack)."""
    from .errors import InputDataError
    from .graders import Panel

    class LoopPanel(Panel):
        """A logistic Panel that, where its labelled rows hold one class only (a tiny generation, or a model
        that gets everything right) or none, scores NaN (it accepts nothing) and says why in `message_`,
        instead of stopping the loop."""

        def score(self, samples: pd.DataFrame) -> pd.Series:
            try:
                return super().score(samples)
            except InputDataError as exc:
                if "needs both classes" not in exc.problem and "no row has a label" not in exc.problem:
                    raise
                self.training_ids_, self.cv_auc_ = [], float("nan")
                self.message_ = f"not fitted, every score NaN: {exc.problem}"
                return pd.Series(float("nan"), index=samples.index, dtype=float)

    return LoopPanel


def detector_real_texts(config: LoopConfig) -> list[str]:
    """What the `realism` detector takes for human text: the task's references (as `real_data`: a seed no
    generation's prompts use, `real_examples` of them)."""
    from .tasks import get_task

    prompts = get_task(config.task, **{**config.task_params, "seed": config.seed + 7_919,
                                       **({"n": config.real_examples} if config.real_examples is not None else {})})
    if "reference" not in prompts.columns or not prompts["reference"].notna().any():
        raise InputDataError(f"The realism grader needs real text, and task {config.task!r} has no references.",
                             "Use a task with references (corpus, instructions, arithmetic) or drop 'realism'.")
    return prompts["reference"].dropna().astype(str).tolist()
