"""Where cells run: one module per backend, each implementing `llc.backends.base.Backend`."""

from __future__ import annotations

import importlib
from typing import Any

from llc.backends.base import Backend, Job, JobState, run_on

# Imported on first use, so a backend's own dependencies (submitit, modal) are needed only when chosen.
BACKENDS = {"local": "llc.backends.local:LocalBackend", "slurm": "llc.backends.slurm:SlurmBackend"}

__all__ = ["BACKENDS", "Backend", "Job", "JobState", "get_backend", "run_on"]


def get_backend(name: str, max_parallel: int, options: dict[str, Any] | None = None) -> Backend:
    """An open backend by name; unknown names and options are errors naming what is allowed."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    cls = getattr(importlib.import_module(module), attr)
    try:
        return cls(max_parallel=max_parallel, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"backend {name}: bad backend option ({exc})") from None
