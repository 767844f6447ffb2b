"""Errors the workbench raises on bad input.

Every error says what was wrong and how to fix it, in one paragraph, so a researcher reading a
notebook traceback knows the next step without opening the source.
"""
from __future__ import annotations


class WorkbenchError(Exception):
    """Base class: `problem` says what went wrong, `fix` what to do about it."""

    def __init__(self, problem: str, fix: str):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} Fix: {fix}")


class ModelSpecError(WorkbenchError, ValueError):
    """A model spec that names no loadable model (unknown alias, bad file, hub id while offline)."""


class InputDataError(WorkbenchError, ValueError):
    """Prompts or other user data that cannot be used as given."""


class RunConfigError(WorkbenchError, ValueError):
    """A run folder that was written by a different configuration."""
