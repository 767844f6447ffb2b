"""workbench: self-learning with synthetic data, on a real model, in JupyterLab.

Generate -> grade -> select -> fine-tune -> repeat, and watch whether the model improves or collapses.
Heavy dependencies (torch, transformers) load on first use, so `import workbench` is instant.
"""
from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "load_model": "models", "LoadedModel": "models", "DEFAULT_MODEL": "models",
    "generate": "sampling", "SamplingParams": "sampling",
    "Run": "store",
    "open_model": "backends", "get_backend": "backends",
    "get_task": "tasks",
    "progress": "progress",
    "WorkbenchError": "errors",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'workbench' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
