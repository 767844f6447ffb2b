"""User prompt files (JSONL, CSV, parquet with a `prompt` column), checked with clear errors."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pandas as pd

from ..errors import InputDataError

FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".txt": "txt"}


def read_table(path: str | Path, what: str = "prompts file") -> pd.DataFrame:
    """Read a JSONL/CSV/parquet (or .txt, one row per non-empty paragraph) file into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"The {what} {path} does not exist.", "Check the path.")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputDataError(f"The {what} {path} has an unsupported extension {path.suffix!r}.",
                             f"Use one of {sorted(FORMATS)}.")
    if kind != "parquet":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InputDataError(
                f"The {what} {path} is not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 4]!r}).",
                "Re-save it as UTF-8, e.g. `iconv -f latin1 -t utf-8 in.csv > out.csv`.") from exc
        if not text.strip():
            raise InputDataError(f"The {what} {path} is empty.", "Add at least one row.")
    try:
        if kind == "jsonl":
            frame = pd.read_json(path, lines=True, dtype=False)
        elif kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        elif kind == "parquet":
            frame = pd.read_parquet(path)
        else:
            frame = pd.DataFrame({"text": [p.strip() for p in text.split("\n\n") if p.strip()]})
    except InputDataError:
        raise
    except Exception as exc:
        raise InputDataError(f"The {what} {path} could not be parsed as {kind} ({str(exc)[:200]}).",
                             "Check the file: JSONL needs one JSON object per line; CSV needs a header row.") from exc
    if frame.empty:
        raise InputDataError(f"The {what} {path} has no rows.", "Add at least one row.")
    return frame


def load_prompts(path: str | Path, column: str = "prompt", n: int | None = None, chat: bool = True) -> pd.DataFrame:
    """Prompts from a user file: column `prompt` required; `prompt_id` and `reference` used when present."""
    frame = read_table(path)
    if column not in frame.columns:
        raise InputDataError(f"The prompts file {path} has no {column!r} column (columns: {list(frame.columns)}).",
                             f"Rename the column holding the prompts to {column!r}, or pass column=NAME.")
    frame = frame.rename(columns={column: "prompt"})
    # a missing prompt (JSON null, a null parquet cell) counts as empty: pandas keeps nulls through astype(str)
    missing = frame["prompt"].isna()
    frame["prompt"] = frame["prompt"].where(~missing, "").astype(str)
    empty = frame["prompt"].str.strip() == ""
    if empty.all():
        raise InputDataError(f"Every prompt in {path} is empty or missing.", "Fill the prompt column.")
    if empty.any():
        warnings.warn(f"Dropped {int(empty.sum())} of {len(frame)} row(s) of {path} with an empty or missing "
                      f"prompt ({int(missing.sum())} missing).", stacklevel=2)
    frame = frame[~empty].reset_index(drop=True)
    if n is not None:
        frame = frame.head(n)
    if "prompt_id" not in frame.columns:
        # content-addressed ids: the same prompt keeps its id when the file is reordered
        frame["prompt_id"] = [f"file-{hashlib.sha256(p.encode()).hexdigest()[:12]}-{i}"
                              for i, p in enumerate(frame["prompt"])]
    frame["prompt_id"] = frame["prompt_id"].astype(str)
    if frame["prompt_id"].duplicated().any():
        dup = frame.loc[frame["prompt_id"].duplicated(), "prompt_id"].iloc[0]
        raise InputDataError(f"The prompts file {path} repeats prompt_id {dup!r}.", "Make prompt_id unique.")
    frame["task"] = frame.get("task", Path(path).stem)
    frame["chat"] = chat
    return frame
