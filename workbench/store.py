"""The run folder: append-only parquet parts, a config that guards reruns, a manifest and a ledger.

`Run` is the one owner of the folder's layout: no other module formats a run path or globs a run
folder. This table is the one description of it (the README's run-folder section matches it)::

    <run>/config.yaml                           what produced the run, one section per stage
    <run>/manifest.json                         tables -> parts and row counts (derived from the parts)
    <run>/ledger.jsonl                          one line per finished chunk: items, tokens, seconds
                                                (also stored in that chunk's part, see `Run.ledger`)
    <run>/gen-000/samples/part-00000.parquet    generated samples (Run.samples)
    <run>/gen-000/scores/<grader>/part-*.parquet    sample_id, score (Run.scores, Run.graded)
    <run>/gen-000/labels/part-*.parquet         human labels: sample_id, label, reviewer, time (Run.labels)
    <run>/gen-000/selections/<name>.parquet     a saved selection, keyed by task or a name (Run.selection_path);
                                                runs made before selections were keyed have gen-000/selection.parquet,
                                                read as the selection named "selection"
    <run>/gen-000/metrics.json                  the loop's per-generation metrics (Run.metrics)
    <run>/gen-000/<name>.parquet                whole tables (Run.write_frame/read_frame): the loop's train_accepted and
                                                train_set, judge-bias probes (probes_<judge>), preference pairs
                                                (pairs: prompt/chosen/rejected, what `workbench export` exports)
                                                and a DPO loop's frozen anchor answers (gen-000/anchor)
    <run>/gen-000/eval/                         the evaluation's own run (Run.eval_run)
    <run>/gen-001/checkpoint/                   the model trained at the end of generation 0 (Run.checkpoint_dir)
    <run>/panel/gen-001/                        the training panel's fine-tunes (Run.panel_dir)

Every file is written to a temporary name and renamed into place, so a process killed at any
moment leaves either a whole part or none; a rerun reads what is there and does only the rest.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from .errors import InputDataError, RunConfigError


_HOST = socket.gethostname().replace("-", "_")
SCORE_PREFIX = "score__"  # a graded table's column for grader <name> is score__<name>
TRAINED_PREFIX = "trained_on__"  # True on the rows a fitted grader (a Panel) was trained on
HUMAN_LABELS = ("good", "bad", "exclude")  # a human's verdict on a sample (Run.add_labels says what each means)
LEGACY_SELECTION = "selection"  # the name a run made before keyed selections gives its gen-XXX/selection.parquet


def score_column(name: str) -> str:
    """The graded table's column of grader `name` (a column name is returned as it is)."""
    return name if name.startswith(SCORE_PREFIX) else SCORE_PREFIX + name


def score_columns(frame: pd.DataFrame) -> dict[str, str]:
    """grader name -> its score column, in the frame's column order."""
    return {c[len(SCORE_PREFIX):]: c for c in frame.columns if str(c).startswith(SCORE_PREFIX)}
_LEDGER_KEY = b"workbench.ledger"  # a part's own ledger line, in its parquet metadata


def _ledger_entry(stage: str, **fields: Any) -> dict:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "stage": stage, **fields}


def _tmp_name(path: Path) -> Path:
    # host and pid in the name: a new Run cleans up only what dead writers of this host left behind
    # (Ray workers and other processes may be writing into the same run at this moment)
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{threading.get_ident()}")


def _stale(tmp: Path) -> bool:
    try:
        host, pid, _ = tmp.name.rsplit(".tmp-", 1)[1].split("-")
    except ValueError:
        return True  # an older naming scheme: its writer is long gone
    if host != _HOST:
        return time.time() - tmp.stat().st_mtime > 3600  # another machine's writer: only when clearly abandoned
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def arrow_table(frame: pd.DataFrame, json_metadata: dict[bytes, Any] | None = None):
    """`frame` as an Arrow table (no index) with each `json_metadata` value stored as JSON under its key
    in the parquet schema metadata (a part's ledger line, a selection's parameters)."""
    import pyarrow as pa

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if json_metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **{
            key: json.dumps(value, default=str).encode() for key, value in json_metadata.items()}})
    return table


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _plain(value):
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return str(value)


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _diff(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: run has {old!r}, now {new!r}"]


class Run:
    """A run folder. Parameters are stored as given; everything else is read from disk on demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        for tmp in self.path.rglob(".*.tmp-*"):  # left by a killed writer; never a finished file
            try:
                if tmp.is_file() and _stale(tmp):  # folders (checkpoints) are their writer's to clean
                    tmp.unlink(missing_ok=True)
            except FileNotFoundError:
                pass  # its writer just renamed it into place

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ config
    @property
    def config(self) -> dict:
        file = self.path / "config.yaml"
        return yaml.safe_load(file.read_text()) or {} if file.exists() else {}

    def check_config(self, section: str, values: dict) -> None:
        """Record `values` under `section`, or refuse if the run already holds different ones."""
        values = json.loads(json.dumps(values))  # plain types only, as YAML will give them back
        config = self.config
        if section in config:
            differences = _diff(config[section], values)
            if differences:
                raise RunConfigError(
                    f"Run folder {self.path} was written by a different configuration for '{section}': "
                    + "; ".join(differences[:8]) + ". Continuing would mix samples from two setups.",
                    "Pass the same settings to resume this run, or choose a new run folder "
                    "(e.g. --run data/runs/NEW_NAME), or delete the old folder if it is no longer needed.")
            return
        config[section] = values
        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))

    # ------------------------------------------------------------------ layout
    @staticmethod
    def generation_name(generation: int) -> str:
        """A generation's folder name, also its label in data (a training row's `source`)."""
        return f"gen-{int(generation):03d}"

    def generation_dir(self, generation: int) -> Path:
        return self.path / self.generation_name(generation)

    def config_key(self, stage: str, name: str, generation: int) -> str:
        """The config.yaml section of one stage's settings for one generation (e.g. "grade:judge:gen-000")."""
        return f"{stage}:{name}:{self.generation_name(generation)}"

    def table_dir(self, table: str, generation: int = 0) -> Path:
        return self.generation_dir(generation) / table

    def metrics_path(self, generation: int) -> Path:
        return self.generation_dir(generation) / "metrics.json"

    def checkpoint_dir(self, generation: int) -> Path:
        """The model generation `generation` starts from (trained at the end of generation - 1)."""
        return self.generation_dir(generation) / "checkpoint"

    def frame_path(self, generation: int, name: str) -> Path:
        """A whole-table file of a generation (the loop's `train_accepted`, `train_set`)."""
        return self.generation_dir(generation) / f"{name}.parquet"

    def write_frame(self, generation: int, name: str, frame: pd.DataFrame) -> Path:
        """Store a whole table of a generation atomically (frame_path(generation, name)); returns its path."""
        path = self.frame_path(generation, name)
        atomic_write_bytes(path, frame.reset_index(drop=True).to_parquet(index=False))
        return path

    def read_frame(self, generation: int, name: str) -> pd.DataFrame | None:
        """A table stored with `write_frame`, or None when there is none."""
        path = self.frame_path(generation, name)
        return pd.read_parquet(path) if path.exists() else None

    def eval_run(self, generation: int) -> "Run":
        """The evaluation of a generation's model keeps its generations in a run of its own."""
        return Run(self.generation_dir(generation) / "eval")

    def panel_dir(self, generation: int) -> Path:
        """Where the training panel writes a fine-tune of generation `generation - 1`'s selection."""
        return self.path / "panel" / self.generation_name(generation)

    def selection_path(self, generation: int = 0, name: str = LEGACY_SELECTION) -> Path:
        if name == LEGACY_SELECTION:
            return self.generation_dir(generation) / "selection.parquet"
        if not name or "/" in name or name.startswith("."):
            raise InputDataError(f"A selection name must be a plain file name, got {name!r}.",
                                 "Use the task's name or a short name such as 'explorer' or 'combined'.")
        return self.generation_dir(generation) / "selections" / f"{name}.parquet"

    def selections(self, generation: int = 0) -> list[str]:
        """Names of the generation's saved selections (a pre-keyed run's selection.parquet is "selection")."""
        folder = self.generation_dir(generation) / "selections"
        names = sorted(p.stem for p in folder.glob("*.parquet")) if folder.exists() else []
        return names + ([LEGACY_SELECTION] if self.selection_path(generation).exists() else [])

    # ------------------------------------------------------------------ tables
    def parts(self, table: str, generation: int = 0) -> list[Path]:
        folder = self.table_dir(table, generation)
        return sorted(folder.glob("part-*.parquet")) if folder.exists() else []

    def append(self, table: str, frame: pd.DataFrame, generation: int = 0,
               log: dict[str, Any] | None = None) -> Path | None:
        """Write `frame` as the next part of `table` (atomically); returns the part's path.

        `log` (`stage=...` and its numbers) is this chunk's ledger line. It is written into the part's
        own metadata as well, so a kill between the part and the ledger line loses nothing: the part
        and its accounting land together, and `ledger()` restores a line a kill kept out of the file.
        """
        import pyarrow.parquet as pq

        if frame.empty:
            return None
        folder = self.table_dir(table, generation)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_name(folder / "part.parquet")
        entry = _ledger_entry(**log) if log is not None else None
        pq.write_table(arrow_table(frame.reset_index(drop=True), {_LEDGER_KEY: entry} if entry else None), tmp)
        while True:
            existing = self.parts(table, generation)
            number = int(existing[-1].stem.split("-")[1]) + 1 if existing else 0
            path = folder / f"part-{number:05d}.parquet"
            try:
                # link, not rename: it fails if another process took this number first (two workers
                # appending at once), where a rename would silently replace that worker's part
                os.link(tmp, path)
                break
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: rename (a race here is then possible)
                if path.exists():
                    continue
                os.replace(tmp, path)
                break
        tmp.unlink(missing_ok=True)
        if entry is not None:
            self._write_ledger_line({**entry, "part": str(path.relative_to(self.path))})
        self.refresh_manifest()
        return path

    def read(self, table: str, generation: int = 0, columns: list[str] | None = None) -> pd.DataFrame:
        parts = self.parts(table, generation)
        if not parts:
            return pd.DataFrame(columns=columns or [])
        frames = []
        for part in parts:
            try:
                frames.append(pd.read_parquet(part, columns=columns))
            except Exception as exc:
                raise InputDataError(f"Part {part} of run {self.path} cannot be read ({exc}).",
                                     "Move that file out of the run folder and rerun the same command: "
                                     "its rows will be produced again.") from exc
        return pd.concat(frames, ignore_index=True)

    def sample_ids(self, table: str = "samples", generation: int = 0) -> set[str]:
        frame = self.read(table, generation, columns=["sample_id"])
        return set(frame["sample_id"]) if len(frame) else set()

    def generations(self) -> list[int]:
        return sorted(int(p.name.split("-")[1]) for p in self.path.glob("gen-[0-9][0-9][0-9]") if p.is_dir())

    # ------------------------------------------------------------------ samples, scores, labels
    def samples(self, generation: int = 0) -> pd.DataFrame:
        return self.read("samples", generation)

    @staticmethod
    def scores_table(grader: str) -> str:
        return f"scores/{grader}"

    def graders(self, generation: int = 0) -> list[str]:
        """Names of the graders with stored scores in this generation."""
        folder = self.table_dir("scores", generation)
        return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if folder.exists() else []

    def scores(self, grader: str, generation: int = 0) -> pd.DataFrame:
        """One grader's stored scores: sample_id, score."""
        return self.read(self.scores_table(grader), generation)

    def graded(self, generation: int = 0) -> pd.DataFrame:
        """The generation's samples with every stored grader's scores as score__<grader> columns (and, for
        a grader fitted on some of the rows, a boolean trained_on__<grader> column marking them)."""
        samples = self.samples(generation)
        for grader in self.graders(generation):
            scores = self.scores(grader, generation)
            if len(scores):
                samples[score_column(grader)] = samples["sample_id"].map(dict(zip(scores["sample_id"], scores["score"])))
                if "trained_on" in scores.columns:
                    trained = set(scores.loc[scores["trained_on"].fillna(False).astype(bool), "sample_id"])
                    samples[TRAINED_PREFIX + grader] = samples["sample_id"].isin(trained)
        return samples

    def add_label(self, sample_id: str, label: str | None, reviewer: str = "", generation: int = 0) -> None:
        """Record a human verdict (one of HUMAN_LABELS, or None to clear it), with reviewer and time."""
        self.add_labels({sample_id: label}, reviewer, generation)

    def add_labels(self, labels: dict[str, str | None], reviewer: str = "", generation: int = 0) -> None:
        """Several verdicts in one part (a lasso over 500 points is one file, not 500). 'good'/'bad' are
        quality verdicts that override the graders; 'exclude' keeps a sample out of the selection without
        saying it is bad (the audit ignores it); None clears a sample's label."""
        unknown = {label for label in labels.values() if label not in (*HUMAN_LABELS, None)}
        if unknown:
            raise InputDataError(f"Unknown human label(s) {sorted(unknown)}.", f"Use one of {HUMAN_LABELS} or None.")
        if not labels:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.append("labels", pd.DataFrame([{"sample_id": sample_id, "label": label or "", "reviewer": reviewer or "",
                                             "time": now} for sample_id, label in labels.items()]), generation)

    def labels(self, generation: int = 0) -> dict[str, str]:
        """sample_id -> 'good' | 'bad' | 'exclude': the latest label of each sample (a cleared label drops it)."""
        stored = self.read("labels", generation)
        latest = dict(zip(stored["sample_id"], stored["label"])) if len(stored) else {}
        return {sample_id: label for sample_id, label in latest.items() if label}

    # ------------------------------------------------------------------ metrics
    def metrics(self, generation: int) -> dict:
        path = self.metrics_path(generation)
        return json.loads(path.read_text()) if path.exists() else {}

    def update_metrics(self, generation: int, **sections: Any) -> dict:
        """Merge `sections` into the generation's metrics.json (atomically); returns the whole dict."""
        metrics = {**self.metrics(generation), "generation": generation, **sections}
        atomic_write_text(self.metrics_path(generation), json.dumps(metrics, indent=2, default=_plain))
        return metrics

    def refresh_manifest(self) -> None:
        """Rewrite manifest.json from the parts on disk (e.g. after other processes appended to the run)."""
        import pyarrow.parquet as pq

        tables = {}
        for folder in self._table_dirs():
            parts = sorted(folder.glob("part-*.parquet"))
            if parts:
                rows = [pq.ParquetFile(p).metadata.num_rows for p in parts]
                tables[str(folder.relative_to(self.path))] = {
                    "rows": sum(rows), "parts": [{"file": p.name, "rows": r} for p, r in zip(parts, rows)]}
        manifest = {"updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tables": tables}
        atomic_write_text(self.path / "manifest.json", json.dumps(manifest, indent=2))

    def _table_dirs(self) -> list[Path]:
        """Every folder of parts in this run's generations (samples, labels, scores/<grader>), not those
        of a run nested inside one (a generation's eval/ keeps its own manifest and ledger)."""
        found = []

        def walk(folder: Path) -> None:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
            if any(folder.glob("part-*.parquet")):
                found.append(folder)
            for child in children:
                if not (child / "config.yaml").exists() and not (child / "ledger.jsonl").exists():
                    walk(child)

        for generation in self.generations():
            walk(self.generation_dir(generation))
        return found

    @property
    def manifest(self) -> dict:
        file = self.path / "manifest.json"
        return json.loads(file.read_text()) if file.exists() else {"tables": {}}

    # ------------------------------------------------------------------ ledger
    def log(self, stage: str, **fields: Any) -> None:
        """Append one ledger line (a whole line per write, so a kill cannot split one). For a chunk that
        writes a part, pass the line as `append(..., log=...)` instead: then a kill cannot lose it."""
        self._write_ledger_line(_ledger_entry(stage, **fields))

    def _write_ledger_line(self, entry: dict) -> None:
        line = (json.dumps(entry, default=str) + "\n").encode()
        file = self.path / "ledger.jsonl"
        if file.exists() and file.stat().st_size:
            with open(file, "rb") as handle:
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line  # a kill cut the last line: start ours on a fresh one
        fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    def ledger(self) -> pd.DataFrame:
        """The ledger's lines, plus (marked `restored`) the lines of parts a kill left unlogged: a part that
        carries its line (see `append`) and has none in ledger.jsonl was written just before a kill."""
        import pyarrow.parquet as pq

        file = self.path / "ledger.jsonl"
        rows = []
        for line in (file.read_text().splitlines() if file.exists() else []):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut by a kill: restored from its part below
        logged = {row.get("part") for row in rows}
        restored = []
        for part in (p for folder in self._table_dirs() for p in sorted(folder.glob("part-*.parquet"))):
            name = str(part.relative_to(self.path))
            if name in logged:
                continue
            try:
                carried = (pq.read_schema(part).metadata or {}).get(_LEDGER_KEY)
            except Exception:  # noqa: BLE001 - an unreadable part is reported by read(), not here
                continue
            if carried:
                restored.append({**json.loads(carried), "part": name, "restored": True})
        if restored:
            rows = sorted(rows + restored, key=lambda row: row.get("time", ""))  # stable: same-second order kept
        return pd.DataFrame(rows)

    # ------------------------------------------------------------------ summary
    def summary(self) -> pd.DataFrame:
        """One row per (generation, task): samples, stop rate, mean completion length, tokens."""
        rows = []
        for generation in self.generations():
            samples = self.read("samples", generation)
            if samples.empty:
                continue
            by = "task" if "task" in samples.columns else None
            groups = samples.groupby(by) if by else [("all", samples)]
            for task, frame in groups:
                rows.append({
                    "generation": generation, "task": task, "samples": len(frame),
                    "prompts": frame["prompt_id"].nunique(),
                    "stopped_%": round(100 * (frame["finish_reason"] == "stop").mean(), 1),
                    "mean_completion_tokens": round(frame["n_completion_tokens"].mean(), 1),
                    "completion_tokens": int(frame["n_completion_tokens"].sum()),
                    "truncated_prompts": int(frame.get("prompt_truncated", pd.Series(dtype=bool)).sum()),
                })
        return pd.DataFrame(rows)
