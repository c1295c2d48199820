"""Where cells run: one module per backend, each implementing `llc.backends.base.Backend`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llc.backends.base import Backend, BackendUnavailable, Ledger, run_on
from llc.errors import ConfigError
from llc.imports import import_path

__all__ = [
    "BACKENDS", "Backend", "BackendUnavailable", "cancel_recorded", "check_backend", "get_backend", "run_on"
]  # fmt: skip

# Imported on first use, so a backend's own dependencies (submitit, modal) are needed only when chosen.
BACKENDS = {
    "local": "llc.backends.local:LocalBackend",
    "slurm": "llc.backends.slurm.backend:SlurmBackend",
    "modal": "llc.backends.modal.client:ModalBackend",
}


def check_backend(name: str) -> None:
    """The one check of a backend's name, where a run or sweep is asked for (before anything is written)."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend {name!r}; choose one of {', '.join(sorted(BACKENDS))}")


def get_backend(name: str, max_parallel: int, options: dict[str, Any] | None = None) -> Backend:
    """An open backend by its name (checked by `check_backend`); a missing dependency or an unknown option
    is an error naming what is allowed."""
    try:
        cls = import_path(BACKENDS[name], "backend")
    except ConfigError as exc:  # a backend's own dependency is missing: its cause names it
        missing = getattr(exc.__cause__, "name", None) or exc.__cause__
        raise ValueError(f"backend {name} needs {missing} (missing): pip install 'llc[{name}]'") from None
    try:
        return cls(max_parallel=max_parallel, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"backend {name}: bad backend option ({exc})") from None


def cancel_recorded(ledger: Path) -> list[str]:
    """Cancel the jobs a sweep recorded that are still queued or running, from any shell; their ids."""
    entries = Ledger(ledger, "").latest().values()
    cancelled = []
    for name in sorted({entry["backend"] for entry in entries}):
        cancel_jobs = import_path(BACKENDS[name].partition(":")[0] + ":cancel_jobs", "backend")
        cancelled += cancel_jobs([entry["job_id"] for entry in entries if entry["backend"] == name])
    return cancelled
