"""Where cells run: one module per backend, each implementing `llc.backends.base.Backend`."""

from __future__ import annotations

import importlib
from typing import Any

from llc.backends.base import Backend, BackendUnavailable, Cancelled, Job, JobState, run_on
from llc.settings import parse_pairs

# Imported on first use, so a backend's own dependencies (submitit, modal) are needed only when chosen.
BACKENDS = {
    "local": "llc.backends.local:LocalBackend",
    "slurm": "llc.backends.slurm:SlurmBackend",
    "modal": "llc.backends.modal:ModalBackend",
}

__all__ = [
    "BACKENDS",
    "Backend",
    "BackendUnavailable",
    "Cancelled",
    "Job",
    "JobState",
    "get_backend",
    "parse_backend_options",
    "run_on",
]


def get_backend(name: str, max_parallel: int, options: dict[str, Any] | None = None) -> Backend:
    """An open backend by name; unknown names and options are errors naming what is allowed."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, _, attr = BACKENDS[name].partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except ImportError as exc:
        missing = exc.name or exc
        raise ValueError(f"backend {name} needs {missing} (missing): pip install 'llc[{name}]'") from None
    try:
        return cls(max_parallel=max_parallel, **(options or {}))
    except TypeError as exc:
        raise ValueError(f"backend {name}: bad backend option ({exc})") from None


def parse_backend_options(pairs: list[str] | None) -> dict[str, Any]:
    """`--backend-option KEY=VALUE` strings to a dict, VALUE parsed as YAML (`gpus=1`, `setup=[a, b]`)."""
    return parse_pairs(pairs, "--backend-option", "partition=gpu")
