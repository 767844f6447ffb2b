"""Data-mix policies of the self-learning loop: what each generation fine-tunes on.

    train_set = mix({"keep_real": 0.1}, accepted_by_generation, real=real_examples(prompts), seed=0)

`replace`, `accumulate`, `keep_real(f)` and `accumulate_subsample(B)` (Shumailov et al. 2024; Gerstgrasser
et al. 2024); the model-collapse experiment compares the first three at the same compute. Any of them can be
detector-weighted (Drayson, Yilmaz & Lampos, EMNLP 2025, "Machine-generated text detection prevents language
model collapse"): `detector_resample` redraws each generation's synthetic rows, with replacement and as many
as there were, with weights from a machine-text detector's P(real) (the `realism` grader), so likely-human
text is up-sampled before the mix.

The functions keep whatever columns the frames have, so the exact toys (workbench/toys.py) run the very same
policies on rows of numbers.
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
    frames = [f for f in [*accepted, real] if f is not None]
    text = any("completion" in f.columns for f in frames) or not frames
    # text rows keep the loop's columns (as before); other rows (the toys' numbers) keep their own
    columns = ["prompt", "completion", "chat", "finish_reason", "source"] if text else \
        list(dict.fromkeys(c for f in frames for c in f.columns if c != "source")) + ["source"]

    def tagged(frame, source):
        frame = frame.copy()
        frame["source"] = source
        if text and "finish_reason" not in frame.columns:
            frame["finish_reason"] = None
        if text and "chat" not in frame.columns:
            frame["chat"] = True
        return frame.reindex(columns=columns)  # a column one frame lacks (e.g. detector_weight) is left empty

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


DETECTOR_WEIGHTS = ("odds", "prob")


def detector_weights(p_real, weight: str = "odds", temperature: float = 1.0) -> np.ndarray:
    """Resampling weights from a detector's P(real) per row, normalised to sum 1.
      odds   (p / (1 - p)) ** (1 / temperature): the classifier's density-ratio estimate p_real(x) / p_model(x),
             the importance weight that turns model samples into (approximately) real-distributed ones
      prob   p ** (1 / temperature): a gentler up-weighting of likely-human rows
    temperature > 1 flattens the weights towards uniform (plain replace), < 1 sharpens them. p is capped at
    1 - 1e-6 so a confident detector cannot give one row all the mass by division by zero; a row with p = 0 is
    never drawn, and all rows at 0 (or NaN) are an error."""
    if weight not in DETECTOR_WEIGHTS:
        raise InputDataError(f"Unknown detector weight {weight!r}.", f"Use one of {list(DETECTOR_WEIGHTS)}.")
    if not np.isfinite(temperature) or temperature <= 0:
        raise InputDataError(f"The detector weights' temperature must be > 0, got {temperature}.", "E.g. 1.0.")
    p = np.asarray(p_real, dtype=float)
    if not len(p) or not np.isfinite(p).any():
        raise InputDataError(f"Detector-weighted resampling got {len(p)} rows and no finite P(real) among them.",
                             "Check the realism grader's scores of this generation (score__realism); "
                             "nothing was written.")
    if np.isnan(p).any():
        raise InputDataError(f"{int(np.isnan(p).sum())} of {len(p)} rows have no P(real) (NaN).",
                             "Grade every row with the realism grader before the mix; nothing was written.")
    if (p < 0).any() or (p > 1).any():
        raise InputDataError(f"P(real) must lie in [0, 1]; got values from {np.nanmin(p):.3g} to {np.nanmax(p):.3g}.",
                             "Pass a probability per row (the realism grader's score); nothing was written.")
    p = np.minimum(p, 1 - 1e-6)  # a row the detector is sure is real must not take all the mass by p / 0
    with np.errstate(over="ignore", under="ignore"):
        raw = (p / (1 - p) if weight == "odds" else p) ** (1.0 / temperature)
    if not np.isfinite(raw).all() or raw.sum() <= 0:
        raise InputDataError("The detector weights are all zero or not finite (the detector gives every row "
                             "P(real) = 0, or the temperature is so low that the weights overflow).",
                             "Check the realism grader, raise the temperature (e.g. 1.0) or use weight 'prob'; "
                             "nothing was written.")
    return raw / raw.sum()


def detector_resample(frame: pd.DataFrame, p_real, weight: str = "odds", temperature: float = 1.0,
                      seed: int = 0) -> pd.DataFrame:
    """`frame`'s rows redrawn with replacement, as many as it has, with `detector_weights(p_real, ...)`: the same
    training compute, spent more on the rows the detector takes for human text (Drayson et al. 2025). Adds a
    `detector_weight` column (each drawn row's normalised weight x rows: 1.0 = as often as plain replace)."""
    if len(frame) != len(np.asarray(p_real)):
        raise InputDataError(f"detector_resample: {len(frame)} rows but {len(np.asarray(p_real))} P(real) values.",
                             "Pass one P(real) per row.")
    weights = detector_weights(p_real, weight, temperature)
    rng = np.random.default_rng([seed, len(frame), 17])
    take = np.sort(rng.choice(len(frame), size=len(frame), replace=True, p=weights))
    out = frame.iloc[take].reset_index(drop=True)
    out["detector_weight"] = weights[take] * len(frame)
    return out


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
