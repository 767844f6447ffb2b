"""Preference pairs from any grader: what DPO learns from (`workbench.select.pairs` is this module's `pairs`).

    found = pairs(run.graded(0), by="judge", margin=0.1, labels=run.labels(0))
    found.frame        # one row per pair: prompt, chosen, rejected, their scores and sample ids, margin
    found.no_pair      # prompts that gave no pair, by reason ("one scored sample", "all tied", "below margin")
    found.to_dataset() # TRL's preference format (prompt / chosen / rejected; conversational for chat prompts)
    found.save(run, 0) # gen-000/pairs.parquet, what `workbench export` exports and the loop trains on

Self-Rewarding Language Models (Yuan et al. 2024) sample several answers per prompt, score them with the
model's own judge and pair the best with the worst; DPO (Rafailov et al. 2023) then raises the likelihood
of the chosen answer relative to the rejected one. Here any grader (or a panel) can pick, and a human label
overrides it as in the explorer: 'good' ranks a sample above every unlabelled one, 'bad' below, 'exclude'
takes it out. Two samples with equal rank never form a pair (a tie says nothing about preference), nor does
a sample without a score (NaN) and without a label; a pair of unlabelled samples must differ by at least
`margin`. `per_prompt=1` gives best-vs-worst; larger values give every qualifying pair, widest margin first,
at most `per_prompt` of them per prompt.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .config import config_section
from .errors import InputDataError
from .store import score_column

PAIRS_TABLE = "pairs"  # gen-XXX/pairs.parquet (Run.write_frame/read_frame); `workbench export` exports it
PAIR_COLUMNS = ("prompt", "chosen", "rejected")  # TRL's preference columns
NO_PAIR_REASONS = ("one scored sample", "all tied", "below margin")
LABEL_RANK = {"good": 1, "bad": -1}  # a human verdict outranks any score


@config_section
class PairPolicy:
    """The loop's `select.pairs` section: how a generation's samples become DPO pairs."""

    by: str = "verifier"                # grader whose score orders a prompt's samples (score__<by>)
    margin: float = 0.0                 # smallest score gap of a pair of unlabelled samples (0: any strict gap)
    per_prompt: int = 1                 # 1: best vs worst; N: up to N pairs per prompt, widest margin first

    def check(self) -> None:
        if not isinstance(self.by, str) or not self.by:
            raise InputDataError(f"pairs.by: expected a grader name, got {self.by!r}.", "E.g. by: judge.")
        if not np.isfinite(float(self.margin)) or self.margin < 0:
            raise InputDataError(f"pairs.margin must be a number >= 0, got {self.margin!r}.", "E.g. margin: 0.1.")
        if self.per_prompt < 1:
            raise InputDataError(f"pairs.per_prompt must be >= 1, got {self.per_prompt}.", "E.g. per_prompt: 1.")


@dataclass
class PreferencePairs:
    """The pairs `pairs` found, and why the other prompts gave none."""

    frame: pd.DataFrame                   # one row per pair (columns: PAIR_COLUMNS, then scores, ids, margin)
    by: str                               # the grader that ordered the samples
    margin: float
    per_prompt: int
    prompts: int                          # prompts seen
    no_pair: dict = field(default_factory=dict)  # reason -> prompts without a pair

    @property
    def n_pairs(self) -> int:
        return len(self.frame)

    @property
    def message(self) -> str:
        made = f"{self.n_pairs} preference pair(s) by {self.by} from {self.prompts} prompt(s)"
        missing = {reason: n for reason, n in self.no_pair.items() if n}
        if not missing:
            return made + "."
        why = ", ".join(f"{n} {reason}" for reason, n in missing.items())
        fix = "" if self.n_pairs else (" Sample more answers per prompt (n_per_prompt), lower the margin, or pair "
                                       "by a grader whose scores differ between answers.")
        return f"{made}; no pair from {sum(missing.values())} prompt(s): {why}.{fix}"

    def to_dataset(self):
        """TRL's preference format as a `datasets.Dataset` (conversational for chat prompts)."""
        import datasets

        return datasets.Dataset.from_list(trl_records(self.frame))

    def save(self, run, generation: int = 0):
        """Store the pairs as gen-XXX/pairs.parquet (what `workbench export` and the loop read)."""
        return run.write_frame(generation, PAIRS_TABLE, self.frame)

    def summary(self) -> dict:
        """What the loop records per generation."""
        return {"pairs": self.n_pairs, "prompts": self.prompts, "no_pair": dict(self.no_pair), "by": self.by,
                "margin": self.margin, "mean_pair_margin": float(self.frame["margin"].mean()) if self.n_pairs and
                self.frame["margin"].notna().any() else None, "message": self.message}


def _rank_keys(frame: pd.DataFrame, by: str, labels: dict | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(label rank, score, usable) per row: label rank from a human verdict (0 without), score of `by`."""
    column = score_column(by) if score_column(by) in frame.columns else by
    if column not in frame.columns:
        have = sorted(c for c in frame.columns if c.startswith("score__"))
        raise InputDataError(f"Cannot pair by {by!r}: the graded table has no column {score_column(by)}.",
                             f"Grade with {by} first, or pair by one of {have or 'no grader yet'}.")
    scores = pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=float)
    verdicts = [(labels or {}).get(s, "") for s in frame["sample_id"]] if "sample_id" in frame.columns \
        else [""] * len(frame)
    rank = np.array([LABEL_RANK.get(v, 0) for v in verdicts], dtype=float)
    usable = np.array([v != "exclude" for v in verdicts]) & (np.isfinite(scores) | (rank != 0))
    return rank, scores, usable


def _prompt_pairs(rank, scores, margin: float, per_prompt: int) -> tuple[list[tuple[int, int]], str | None]:
    """(chosen, rejected) row positions within one prompt's usable rows, or the reason there are none."""
    n = len(rank)
    if n < 2:
        return [], "one scored sample"
    key = np.where(np.isfinite(scores), scores, 0.0)
    candidates = []
    for i in range(n):
        for j in range(n):
            by_label = bool(rank[i] > rank[j])
            gap = float(key[i] - key[j])
            if by_label or (rank[i] == rank[j] and gap > 0):
                candidates.append((by_label, gap, i, j))
    if not candidates:
        return [], "all tied"
    qualifying = [c for c in candidates if c[0] or c[1] >= max(margin, 1e-12)]
    if not qualifying:
        return [], "below margin"
    qualifying.sort(key=lambda c: (-c[0], -c[1], c[2], c[3]))  # labelled pairs first, then the widest gap
    return [c[2:] for c in qualifying[:per_prompt]], None


def pairs(graded: pd.DataFrame, by: str = "verifier", margin: float = 0.0, per_prompt: int = 1,
          labels: dict | None = None) -> PreferencePairs:
    """Preference pairs per prompt (see the module docstring): chosen = best-ranked sample, rejected = worst."""
    policy = PairPolicy(by=by, margin=margin, per_prompt=per_prompt)
    policy.check()
    missing = [c for c in ("prompt", "completion") if c not in graded.columns]
    if missing:
        raise InputDataError(f"Cannot form pairs: the graded table lacks column(s) {missing}.",
                             "Pass run.graded(generation) (samples with their score__<grader> columns).")
    rank, scores, usable = _rank_keys(graded, policy.by, labels)
    group = graded["prompt_id"] if "prompt_id" in graded.columns else graded["prompt"]
    rows, no_pair = [], dict.fromkeys(NO_PAIR_REASONS, 0)
    positions = pd.Series(np.arange(len(graded))).groupby(group.to_numpy(), sort=False)
    for _, members in positions:
        members = members.to_numpy()
        members = members[usable[members]]
        found, reason = _prompt_pairs(rank[members], scores[members], float(policy.margin), policy.per_prompt)
        if reason:
            no_pair[reason] += 1
        for i, j in found:
            rows.append(_pair_row(graded, members[i], members[j], scores, rank, policy.by))
    frame = pd.DataFrame(rows, columns=list(PAIR_COLUMNS) + PAIR_EXTRA_COLUMNS)
    return PreferencePairs(frame=frame, by=policy.by, margin=float(policy.margin), per_prompt=policy.per_prompt,
                           prompts=int(group.nunique()), no_pair=no_pair)


PAIR_EXTRA_COLUMNS = ["chosen_score", "rejected_score", "margin", "by_label", "chosen_id", "rejected_id", "prompt_id",
                      "chat", "task", "system_prompt"]


def _pair_row(graded: pd.DataFrame, chosen: int, rejected: int, scores, rank, by: str) -> dict:
    row_c, row_r = graded.iloc[chosen], graded.iloc[rejected]
    return {"prompt": str(row_c["prompt"]), "chosen": str(row_c["completion"]), "rejected": str(row_r["completion"]),
            "chosen_score": scores[chosen], "rejected_score": scores[rejected],
            "margin": scores[chosen] - scores[rejected], "by_label": bool(rank[chosen] != rank[rejected]),
            "chosen_id": row_c.get("sample_id"), "rejected_id": row_r.get("sample_id"),
            "prompt_id": row_c.get("prompt_id"), "chat": bool(row_c.get("chat", True)),
            "task": row_c.get("task"), "system_prompt": row_c.get("system_prompt")}


def check_pairs(frame: pd.DataFrame, where: str = "the preference pairs") -> None:
    """Refuse a table that is not TRL's preference format, naming the missing columns."""
    if frame is None or not isinstance(frame, pd.DataFrame):
        raise InputDataError(f"{where} must be a table with columns {list(PAIR_COLUMNS)}, got {type(frame).__name__}.",
                             "Build them with workbench.select.pairs(graded, by=...).")
    missing = [c for c in PAIR_COLUMNS if c not in frame.columns]
    if missing:
        raise InputDataError(f"{where} lack column(s) {missing}; they have {list(frame.columns)}.",
                             "A preference table needs prompt, chosen and rejected (TRL's format): build it with "
                             "workbench.select.pairs(graded, by=...), or rename your columns.")


def trl_records(frame: pd.DataFrame) -> list[dict]:
    """Rows of `frame` in TRL's preference format: conversational messages where `chat` is true (with the
    system prompt generation used, if any), plain text otherwise; rows that already hold messages (a
    `workbench export` of pairs read back) pass through."""
    check_pairs(frame)
    records = []
    for row in frame.to_dict("records"):
        if not isinstance(row["prompt"], str) and hasattr(row["prompt"], "__len__"):  # already messages (an export)
            records.append({k: [dict(m) for m in row[k]] for k in PAIR_COLUMNS})
        elif bool(row.get("chat", False)):
            system = row.get("system_prompt")
            prompt = ([{"role": "system", "content": str(system)}] if isinstance(system, str) and system else []) + \
                [{"role": "user", "content": str(row["prompt"])}]
            records.append({"prompt": prompt, "chosen": [{"role": "assistant", "content": str(row["chosen"])}],
                            "rejected": [{"role": "assistant", "content": str(row["rejected"])}]})
        else:
            records.append({k: str(row[k]) for k in PAIR_COLUMNS})
    return records
