"""Export: a run's accepted samples (or its preference pairs) as a `datasets.Dataset`, written with a card.

    Selection.load(run, 0).to_dataset(run, generation=0)           # a datasets.Dataset, in memory
    export(run, "out/arith", format="parquet", task="arithmetic")   # out/arith/train.parquet + README.md
    workbench export RUN [--generation G] [--task T] [--selection NAME] --format datasets|jsonl|parquet OUT

What is exported is the selection *as saved* (its mask over sample ids), not a fresh `reapply`: the rows are
the ones the researcher accepted, even if graders or labels changed since. One row per accepted sample:
sample_id, generation, task, prompt_id, prompt, completion, its scores (score__<grader>, NaN where a grader
did not score it), human_label (the run's latest label: "good", "bad" or "") and what identifies how it was
made (model, finish_reason, ...). The dataset card (README.md, `workbench.dataset_card`) says how.

Preference pairs: when a generation holds a table `pairs` (gen-XXX/pairs.parquet with columns prompt, chosen,
rejected, which `select.pairs(...).save(run, g)` and the loop's DPO mode write), `kind="auto"` exports it instead
of the accepted samples, in TRL's preference format: conversational messages for chat rows (`chat` true),
plain text otherwise, with the pair's scores, margin and sample ids beside them.

Writing is atomic: everything goes to a hidden folder next to OUT that is renamed to OUT at the end, so an
export killed at any moment leaves OUT as it was (and a hidden `.OUT.export-tmp-<pid>` that the next export
of OUT removes).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset_card import DATA_FILES, card_text, portable_model
from .errors import InputDataError
from .pairs import PAIR_COLUMNS, PAIRS_TABLE, check_pairs, trl_records
from .progress import quiet_datasets
from .select import Selection
from .store import SCORE_PREFIX, Run

FORMATS = ("datasets", "jsonl", "parquet")
KINDS = ("auto", "samples", "pairs")
# the samples' columns an exported row keeps (when the run has them), in this order; score__* follow
SAMPLE_COLUMNS = ("sample_id", "generation", "task", "prompt_id", "prompt", "completion", "reference", "chat",
                  "finish_reason", "n_completion_tokens", "model", "sample_seed")
NO_SELECTION_FIX = ("Make one first: `workbench demo` saves one; in notebook 03_thresholds the explorer's Save "
                    "button does; `workbench loop CONFIG.yaml` saves one per generation; or in Python "
                    "`workbench.select.accept(run.graded(g), policy).save(run, g)`.")


@dataclass
class ExportSource:
    """What one export writes: its rows, and what the dataset card reports about them."""

    run: Run
    generation: int
    kind: str                      # "samples" | "pairs"
    rows: pd.DataFrame             # the exported rows
    scope: pd.DataFrame            # the graded rows the selection decided over (after the task filter)
    selection: Selection | None    # None for pairs
    selection_name: str | None
    task: str | None

    @property
    def accept_rate(self) -> float | None:
        return len(self.rows) / len(self.scope) if self.kind == "samples" and len(self.scope) else None


# ---------------------------------------------------------------------------------------------- rows
def accepted_frame(selection: Selection, run: Run, generation: int = 0,
                   task: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(accepted rows, every row the selection decided over), both from the run's graded table, in the
    selection's order, restricted to `task` when given."""
    graded = run.graded(generation)
    ids = pd.Index(selection.sample_ids)
    missing = ids.difference(pd.Index(graded["sample_id"]) if len(graded) else pd.Index([]))
    if len(missing):
        raise InputDataError(
            f"The selection names {len(missing)} sample(s) that generation {generation} of run {run.name} does not "
            f"hold (e.g. {missing[0]!r}): it was saved from another run or generation.",
            "Export the generation it was made from (--generation), or save the selection again on this one.")
    scope = graded.set_index("sample_id").loc[ids].reset_index()
    scope.insert(1, "generation", generation)
    if "model" in scope.columns:  # a fine-tuned model is named by its folder's absolute path: not shared
        scope["model"] = scope["model"].map(lambda name: portable_model(name, run))
    labels = run.labels(generation)
    scope["human_label"] = [labels.get(sample_id, "") for sample_id in scope["sample_id"]]
    accepted = np.asarray(selection.mask, dtype=bool)
    if task is not None:
        in_task = _in_task(scope, task, run, generation).to_numpy()
        scope, accepted = scope[in_task], accepted[in_task]
    return _sample_columns(scope[accepted]), scope.reset_index(drop=True)


def _in_task(frame: pd.DataFrame, task: str, run: Run, generation: int) -> pd.Series:
    if "task" not in frame.columns:
        raise InputDataError(f"Generation {generation} of run {run.name} has no task column to filter by.",
                             "Leave out --task.")
    found = frame["task"] == task
    if not found.any():
        raise InputDataError(f"No rows of task {task!r} in this export of run {run.name}, generation {generation}.",
                             f"Use one of: {sorted(map(str, frame['task'].dropna().unique()))}.")
    return found


def _sample_columns(frame: pd.DataFrame) -> pd.DataFrame:
    scores = [c for c in frame.columns if str(c).startswith(SCORE_PREFIX)]
    keep = [c for c in SAMPLE_COLUMNS if c in frame.columns] + scores + ["human_label"]
    out = frame[keep].reset_index(drop=True)
    for column in scores:
        out[column] = pd.to_numeric(out[column], errors="coerce").astype(float)
    return out


def stored_pairs(run: Run, generation: int, task: str | None = None) -> pd.DataFrame | None:
    """The generation's preference pairs (None when it has none) in TRL's format (`pairs.trl_records`: chat
    rows as conversational messages), checked for TRL's columns."""
    pairs = run.read_frame(generation, PAIRS_TABLE)
    if pairs is None:
        return None
    check_pairs(pairs, f"The pairs table of generation {generation} of run {run.name}")
    if task is not None:
        pairs = pairs[_in_task(pairs, task, run, generation)]
    pairs = pairs.reset_index(drop=True)
    if "chat" in pairs.columns:
        formatted = pd.DataFrame(trl_records(pairs))
        pairs = pd.concat([formatted, pairs.drop(columns=list(PAIR_COLUMNS))], axis=1)
    return pairs


# ---------------------------------------------------------------------------------------------- choosing
def resolve_generation(run: Run, generation: int | None, kind: str) -> int:
    """`generation`, or the last generation holding something to export (a selection or, unless
    kind="samples", a pairs table)."""
    if generation is not None:
        if generation not in run.generations():
            raise InputDataError(f"Run {run.name} has no generation {generation}.",
                                 f"Use one of: {run.generations() or 'none (the run holds no samples yet)'}.")
        return generation
    exportable = [g for g in run.generations()
                  if (kind != "pairs" and run.selections(g)) or (kind != "samples" and run.frame_path(g, PAIRS_TABLE).exists())]
    if not exportable:
        what = "preference pairs" if kind == "pairs" else "saved selection"
        raise InputDataError(f"Run {run.name} has no {what} in any generation: there is nothing to export.",
                             NO_SELECTION_FIX if kind != "pairs" else
                             "Store pairs with run.write_frame(generation, 'pairs', frame), or use --kind samples.")
    return exportable[-1]


def resolve_selection(run: Run, generation: int, name: str | None, task: str | None) -> tuple[str, Selection]:
    """The saved selection to export: `name`; else the generation's only one; else the one named after `task`."""
    names = run.selections(generation)
    if not names:
        raise InputDataError(f"Generation {generation} of run {run.name} has no saved selection.", NO_SELECTION_FIX)
    if name is None:
        if len(names) == 1:
            name = names[0]
        elif task in names:
            name = task
        else:
            raise InputDataError(f"Generation {generation} of run {run.name} has {len(names)} saved selections: "
                                 f"{names}.", "Choose one with --selection NAME (selection=... in Python).")
    if name not in names:
        raise InputDataError(f"No selection named {name!r} in generation {generation} of run {run.name}.",
                             f"Saved selections there: {names}.")
    return name, Selection.load(run, generation, name)


def collect(run: Run, generation: int | None = None, selection: str | None = None, task: str | None = None,
            kind: str = "auto") -> ExportSource:
    """Everything one export writes, checked before anything is written."""
    if kind not in KINDS:
        raise InputDataError(f"Unknown export kind {kind!r}.", f"Use one of {list(KINDS)}.")
    generation = resolve_generation(run, generation, kind)
    pairs = stored_pairs(run, generation, task) if kind != "samples" and selection is None else None
    if pairs is not None:
        return ExportSource(run, generation, "pairs", pairs, pairs, None, None, task)
    if kind == "pairs":
        raise InputDataError(f"Generation {generation} of run {run.name} holds no preference pairs.",
                             "Export its accepted samples (--kind samples).")
    name, chosen = resolve_selection(run, generation, selection, task)
    rows, scope = accepted_frame(chosen, run, generation, task)
    if rows.empty:
        raise InputDataError(f"Selection {name!r} of generation {generation} of run {run.name} accepted no sample"
                             f"{f' of task {task!r}' if task else ''}: there is nothing to export.",
                             "Loosen its policy and save it again (notebook 03_thresholds), or export another one.")
    return ExportSource(run, generation, "samples", rows, scope, chosen, name, task)


def to_dataset(frame: pd.DataFrame):
    """`frame` as a `datasets.Dataset` (no index column)."""
    import datasets

    return datasets.Dataset.from_pandas(frame.reset_index(drop=True), preserve_index=False)


def samples_dataset(selection: Selection, run: Run, generation: int = 0, task: str | None = None):
    """`Selection.to_dataset`: the selection's accepted rows of `run`'s generation as a `datasets.Dataset`."""
    return to_dataset(accepted_frame(selection, run, generation, task)[0])


# ---------------------------------------------------------------------------------------------- writing
def check_output(out: Path, run: Run, overwrite: bool) -> None:
    """Refuse an OUT that holds something (unless `overwrite`), or whose replacement would delete the run
    or the working directory."""
    out = out.resolve()
    for precious, what in ((run.path.resolve(), "the run folder"), (Path.cwd().resolve(), "the working directory")):
        if out == precious or out in precious.parents:
            raise InputDataError(f"The output folder {out.name!r} is (or contains) {what}.",
                                 "Export to a new folder, e.g. exports/NAME.")
    if out.exists() and (out.is_file() or any(out.iterdir())) and not overwrite:
        raise InputDataError(f"The output {out.name!r} already exists and is not empty.",
                             "Choose a new folder, or pass --overwrite (overwrite=True) to replace it.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _remove_stale(out: Path) -> None:
    """Remove what a killed export of OUT left next to it (its writer process is gone)."""
    for leftover in out.parent.glob(f".{out.name}.export-*-*"):
        pid = leftover.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def staging(out: Path) -> Iterator[Path]:
    """A hidden folder next to `out` to write into; renamed to `out` (replacing what is there) on success,
    removed on any error, so `out` is never half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    tmp = out.parent / f".{out.name}.export-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():  # replaced: moved aside first (a rename cannot replace a non-empty folder)
        old = out.parent / f".{out.name}.export-old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
    else:
        os.rename(tmp, out)


def write_data(dataset, folder: Path, format: str) -> list[str]:
    """Write `dataset` into `folder` in `format`; returns the data files' names (relative to `folder`)."""
    with quiet_datasets():
        return _write_data(dataset, folder, format)


def _write_data(dataset, folder: Path, format: str) -> list[str]:
    if format == "datasets":
        dataset.save_to_disk(str(folder))
        return sorted(p.name for p in folder.iterdir())
    name = DATA_FILES[format]
    if format == "jsonl":
        dataset.to_json(str(folder / name), lines=True, force_ascii=False)
    else:
        dataset.to_parquet(str(folder / name))
    return [name]


def export(run: Run | str | os.PathLike, out: str | os.PathLike, format: str = "datasets",
           generation: int | None = None, selection: str | None = None, task: str | None = None,
           kind: str = "auto", overwrite: bool = False, command: str | None = None) -> ExportSource:
    """Write the run's accepted samples (or pairs) to `out` in `format`, with a dataset card README.md;
    `command` is what the card records as the command that made it. Returns what was exported."""
    run = run if isinstance(run, Run) else _open_run(Path(run))
    if format not in FORMATS:
        raise InputDataError(f"Unknown export format {format!r}.", f"Use one of {list(FORMATS)}.")
    out = Path(out)
    check_output(out, run, overwrite)
    source = collect(run, generation, selection, task, kind)
    dataset = to_dataset(source.rows)
    card = card_text(source, format=format, command=command)  # before writing: a failing card writes nothing
    with staging(out) as folder:
        write_data(dataset, folder, format)
        (folder / "README.md").write_text(card, encoding="utf-8")
    return source


def _open_run(path: Path) -> Run:
    if not path.is_dir():
        raise InputDataError(f"No run folder at {path}.", "Pass a run folder, or a run's name under data/runs/.")
    return Run(path)
