"""Experiment tracking: the loop's per-generation metrics, the experiments' arms and seeds, and `finetune`'s
loss curve, logged to a local trackio store (trackio speaks the wandb API; its store is one SQLite file
per project). Off by default; the one option that turns it on is the `track:` section of a loop config:

    track: {project: my-project}          # optional: dir (the store), name, group; backend: trackio

The experiment scripts (`python experiments/label_free.py --track`) and `workbench finetune --track
PROJECT` fill that same section. Off, nothing is imported and nothing is written. On, the store is
`<data>/tracking/` (data/tracking in a clone; `track.dir` moves it) and nothing leaves the machine:
TRACKIO_SPACE_ID / TRACKIO_SERVER_URL are ignored here (publish later with `trackio sync`), the dashboard
is not launched, and no CPU/GPU monitor threads run. View it with
`TRACKIO_DIR=data/tracking trackio show --project my-project`.

What goes where: one tracker run per `loop.run` call, named after the run folder. Generation g's row of
`loop.history` (accuracy, perplexity, diversity, accept rate, mean scores, AUCs, train and cost columns,
collapsed) is logged at step g, with a `generation` key for the dashboard's x-axis. Every optimizer step
of a fine-tune run inside it is logged under `train/` (loss, lr, grad_norm, tokens_per_s, generation) at a
step counting optimizer steps across the run's fine-tunes. A resumed loop logs every generation again into
a new tracker run, and replays the loss curves of fine-tunes that finished before it from their
checkpoint's train_history.jsonl, so the newest run of a name is always complete.

Why trackio rather than MLflow's local store (measured on this machine, one session, 2026-11-28, AMD EPYC
2 cores with another job running; each candidate installed into a venv that already held our
dependencies, so the numbers are only what it adds):

| | trackio 0.43.0 | mlflow-skinny 3.17.2 | mlflow 3.17.2 |
|---|---|---|---|
| added to site-packages | 56 MB (10 packages) | 85 MB (16) | 428 MB (50, downgrading two of ours*) |
| import (-X importtime; wall of `python -c`), best of 3 | 0.30 s; 0.44 s | 0.89 s; 1.46 s | 0.92 s; 1.56 s |
| init, 100 logs of 1 key, 1 of 100 keys, finish | 0.06 s | 0.05 s (file store) | 7.6 s (sqlite; 5.5 s making tables) |
| offline | no network attempt | one DNS lookup (telemetry) unless MLFLOW_DISABLE_TELEMETRY | same |

* mlflow pins pyarrow<26 (ours 26.0.1 -> 25.0.1); its graphene pins python-dateutil<3 (ours 4.0 -> 2.9).

mlflow-skinny cannot open the sqlite store (no SQLAlchemy) and its file store is in maintenance mode: it
refuses to start unless MLFLOW_ALLOW_FILE_STORE=true. trackio is the smallest, imports fastest, made no
network attempt (socket audit hook, and it ran inside `unshare -n`), and writes one SQLite file we can read
back. Its one constraint: the store folder is read from TRACKIO_DIR when trackio is first imported, so one
process logs to one folder (`start` says so if asked for another).
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from .config import config_section, from_fields
from .errors import InputDataError

BACKENDS = ("trackio",)
TRAIN_KEYS = ("loss", "lr", "grad_norm", "tokens_per_s", "epoch")  # of finetune's per-step events
# trackio would send to a Hugging Face Space or a server when these are set: tracking here stays local
REMOTE_ENV = ("TRACKIO_SPACE_ID", "TRACKIO_SERVER_URL", "TRACKIO_BUCKET_ID", "TRACKIO_DATASET_ID")


@config_section
class TrackConfig:
    """The loop config's `track:` section. Tracking is on when `project` is set."""

    project: str | None = None          # the tracker's project (letters, digits, - and _); None: off
    dir: str | None = None              # the store folder; None: <data>/tracking (data/tracking in a clone)
    name: str | None = None             # the tracker run's name; None: the run folder's name
    group: str | None = None            # runs of one group toggle together in the dashboard (the experiments: arm)
    backend: str = "trackio"            # the only one (why: this module's docstring)

    @property
    def enabled(self) -> bool:
        return self.project is not None

    def check(self) -> None:
        if self.backend not in BACKENDS:
            raise InputDataError(f"track.backend: {self.backend!r} is not supported.",
                                 "Use backend: trackio (local-first, speaks the wandb API), or leave it out.")
        # the project names the store's file (<dir>/<project>.db); trackio silently drops other characters
        if self.project is not None and (not re.fullmatch(r"[A-Za-z0-9_-]+", self.project)
                                         or self.project.startswith("registry-")):
            raise InputDataError(f"track.project: {self.project!r} is not a usable project name.",
                                 "Use letters, digits, '-' and '_' only (not starting with 'registry-'), "
                                 "e.g. project: label-free.")


def as_track(value) -> TrackConfig | None:
    """`value` (a TrackConfig, a dict as YAML gives it, a project name, or None) as a checked TrackConfig."""
    if value is None or isinstance(value, TrackConfig):
        return value
    if isinstance(value, str):
        value = {"project": value}
    return from_fields(TrackConfig, value, "track")


def store_dir(track: TrackConfig) -> Path:
    from .models import data_dir

    return Path(track.dir).expanduser().resolve() if track.dir else (data_dir() / "tracking").resolve()


# ----------------------------------------------------------------------------------- trackers

class _Off:
    """Tracking off: every hook is a no-op, and nothing was imported to get here."""

    enabled = False

    def log_generation(self, run, generation: int) -> None:
        pass

    def log_train_step(self, event: dict) -> None:
        pass


OFF = _Off()
_active: "_Trackio | None" = None  # the tracker `finetune` logs its steps to (set inside `start`)


def _scalars(values: dict, prefix: str = "") -> dict:
    """The finite numbers among `values` (booleans as 0/1): a tracker plots numbers, not text or gaps."""
    out = {}
    for key, value in values.items():
        if isinstance(value, bool):
            value = int(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[prefix + key] = value
        elif hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars from a DataFrame
            try:
                out.update(_scalars({key: value.item()}, prefix))
            except (TypeError, ValueError):
                pass
    return out


class _Trackio:
    """One trackio run (local store only)."""

    enabled = True

    def __init__(self, track: TrackConfig, name: str, config: dict | None, say: Callable[[str], None]):
        self.track, self.folder = track, store_dir(track)
        trackio = _import_trackio(self.folder)
        saved = {key: os.environ.pop(key) for key in REMOTE_ENV if key in os.environ}
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # its banner and dashboard hints; `say` says it once
                self.run = trackio.init(project=track.project, name=name, group=track.group,
                                        config=json.loads(json.dumps(config or {}, default=str)), resume="never",
                                        embed=False, auto_log_cpu=False, auto_log_gpu=False)
        finally:
            os.environ.update(saved)
        self.name, self.train_step, self.next_generation, self.trained_live = name, 0, 0, False
        say(f"   tracking: trackio project {track.project!r}, run {name!r} in {self.folder} "
            f"(view: TRACKIO_DIR={self.folder} trackio show --project {track.project})")

    def log_generation(self, run, generation: int) -> None:
        """Generation `generation`'s row of `loop.history(run)` at step `generation`; first its fine-tune's
        loss curve from the checkpoint when that ran before this tracker run (a resumed loop)."""
        from .loop import history

        if not self.trained_live:
            self._replay_training(run.checkpoint_dir(generation + 1) / "train_history.jsonl")
        frame = history(run)
        rows = frame[frame["generation"] == generation].to_dict("records")
        if rows:
            self.run.log({**_scalars(rows[0]), "generation": generation}, step=generation)
        self.next_generation, self.trained_live = generation + 1, False

    def log_train_step(self, event: dict) -> None:
        """One optimizer step of a fine-tune (finetune's callback event) under `train/`."""
        self.train_step += 1
        self.trained_live = True
        self.run.log({**_scalars({k: event.get(k) for k in TRAIN_KEYS}, "train/"),
                      "train/generation": self.next_generation}, step=self.train_step)

    def _replay_training(self, path: Path) -> None:
        if path.exists():
            for line in path.read_text().splitlines():
                if line.strip():
                    self.log_train_step(json.loads(line))
            self.trained_live = False

    def finish(self) -> None:
        from trackio import context_vars

        with contextlib.redirect_stdout(io.StringIO()):
            try:
                self.run.finish()  # waits for trackio's writer thread: every value is in the store after this
            finally:
                if context_vars.current_run.get() is self.run:  # else trackio's atexit finishes it again
                    context_vars.current_run.set(None)


def _import_trackio(folder: Path):
    """trackio, logging into `folder`. It reads TRACKIO_DIR once, at import (its default is the home
    directory's Hugging Face cache, which tests and other projects would share), so the folder is set
    before the first import and one process keeps one folder."""
    import sys

    if "trackio" not in sys.modules:
        os.environ["TRACKIO_DIR"] = str(folder)
    try:
        import trackio
        from trackio import utils
    except ImportError:
        raise InputDataError("Tracking is on (track.project is set) but trackio is not installed.",
                             "pip install -e '.[track]' (or pip install trackio), or remove the track "
                             "section / --track.") from None
    if Path(utils.TRACKIO_DIR).resolve() != folder:
        raise InputDataError(f"trackio already logs to {utils.TRACKIO_DIR} in this process; asked for {folder}.",
                             "trackio fixes its store folder at import: give every run of one process the "
                             "same track.dir, or run this one in a new process.")
    return trackio


# ----------------------------------------------------------------------------------- hooks

def run_name(run_path) -> str:
    """A loop run's tracker name: its folder's path under data/runs, else the folder's name."""
    from .models import data_dir

    path = Path(run_path).resolve()
    try:
        return str(path.relative_to((data_dir() / "runs").resolve()))
    except ValueError:
        return path.name


@contextmanager
def start(track: TrackConfig | None, name: str, config: dict | None = None,
          say: Callable[[str], None] | None = None) -> Iterator["_Trackio | _Off"]:
    """A tracker run for the block (finished at its end, whatever happens), or `OFF` when `track` is None or
    has no project. Inside it, `finetune` logs its optimizer steps to this run."""
    global _active

    if track is None or not track.enabled:
        yield OFF
        return
    tracker = _Trackio(track, track.name or name, config, say or (lambda text: print(text, flush=True)))
    previous, _active = _active, tracker
    try:
        yield tracker
    finally:
        _active = previous
        tracker.finish()


def with_training(callback: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
    """`finetune`'s callback, plus logging of each optimizer step to the active tracker; `callback` itself
    when none is active (and in the non-zero ranks of a multi-process fine-tune: one process logs)."""
    tracker = _active
    if tracker is None or int(os.environ.get("RANK", "0")) != 0:
        return callback

    def log_step(event: dict) -> None:
        tracker.log_train_step(event)
        if callback is not None:
            callback(event)

    return log_step


def track_experiment(configs: dict, project: str, dir: str | None = None) -> dict:
    """Turn tracking on in every arm of every seed (`seed_configs`' shape): one tracker run per (arm, seed),
    named `<arm>/seed-<s>` and grouped by arm. Returns `configs`."""
    for seed, arms in configs.items():
        for arm, config in arms.items():
            config.track = as_track({"project": project, "dir": dir, "name": f"{arm}/seed-{seed}", "group": arm})
    return configs
