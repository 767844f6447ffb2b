"""The one progress reporter of the package: a widget bar in JupyterLab, a tqdm bar in a terminal,
plain timestamped lines in logs and CI (where a bar would print nothing or garbage).

Every long loop in the workbench goes through `progress(...)`, so rates (items/s, tokens/s) read
the same everywhere. Override the choice with WORKBENCH_PROGRESS=bar|lines|off.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


def _mode() -> str:
    forced = os.environ.get("WORKBENCH_PROGRESS", "").strip().lower()
    if forced in ("bar", "lines", "off"):
        return forced
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            return "widget"
    except ImportError:
        pass
    return "bar" if sys.stderr.isatty() else "lines"


class Progress:
    """Counts items (and optionally tokens) towards a total; reports rates.

    Use as a context manager: ``with progress(n, "generate") as bar: bar.update(k, tokens=t)``.
    """

    def __init__(self, total: int, desc: str, unit: str = "items", every: float = 10.0, mode: str | None = None):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.mode = mode or _mode()
        self.count = 0
        self.tokens = 0
        self.started = time.perf_counter()
        self._last_line = self.started
        self._bar = None
        if self.mode in ("bar", "widget"):
            if self.mode == "widget":
                from tqdm.notebook import tqdm
            else:
                from tqdm import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit.rstrip("s") or unit, dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def rates(self) -> dict:
        seconds = max(self.elapsed, 1e-9)
        return {f"{self.unit}_per_s": self.count / seconds, "tokens_per_s": self.tokens / seconds}

    def _text(self) -> str:
        rates = self.rates()
        parts = [f"{self.desc}: {self.count}/{self.total} {self.unit}",
                 f"{rates[f'{self.unit}_per_s']:.2f} {self.unit}/s"]
        if self.tokens:
            parts.append(f"{rates['tokens_per_s']:.0f} tok/s")
        remaining = self.total - self.count
        if self.count and remaining > 0:
            parts.append(f"eta {remaining * self.elapsed / self.count:.0f}s")
        parts.append(f"{self.elapsed:.0f}s elapsed")
        return " | ".join(parts)

    def update(self, n: int = 1, tokens: int = 0) -> None:
        self.count += n
        self.tokens += tokens
        if self._bar is not None:
            self._bar.update(n)
            if self.tokens:
                self._bar.set_postfix_str(f"{self.rates()['tokens_per_s']:.0f} tok/s", refresh=False)
        elif self.mode == "lines" and time.perf_counter() - self._last_line >= self.every:
            self._last_line = time.perf_counter()
            print(f"[{time.strftime('%H:%M:%S')}] {self._text()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.mode == "lines":
            print(f"[{time.strftime('%H:%M:%S')}] {self._text()} (done)", file=sys.stderr, flush=True)
            self.mode = "closed"

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, unit: str = "items", every: float = 10.0) -> Progress:
    return Progress(total, desc, unit=unit, every=every)


@contextmanager
def quiet_datasets() -> Iterator[None]:
    """No per-call progress bars from `datasets` (a one-second write prints three of them), restored after."""
    import datasets

    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
