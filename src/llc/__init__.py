"""Estimate the local learning coefficient (LLC) of neural networks with batched MCMC chains, and run
sweeps of such estimates as Prefect flows."""

from __future__ import annotations

from typing import Any

from llc.local_server import apply_prefect_defaults

__all__ = ["estimate"]

# Before anything here imports Prefect: the project's Prefect defaults (telemetry off, ...).
apply_prefect_defaults()


def __getattr__(name: str) -> Any:
    # Imported on first use: `import llc.sweeps...` in a light worker must not load torch.
    if name == "estimate":
        from llc.own_model import estimate

        return estimate
    raise AttributeError(f"module 'llc' has no attribute {name!r}")
