"""Estimate the local learning coefficient (LLC) of neural networks with batched MCMC chains."""

from __future__ import annotations

from typing import Any

__all__ = ["estimate"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import llc.sweeps...` in a light worker must not load torch.
    if name == "estimate":
        from llc.own_model import estimate

        return estimate
    raise AttributeError(f"module 'llc' has no attribute {name!r}")
