"""Estimate the local learning coefficient (LLC) of neural networks with batched MCMC chains, and run
sweeps of such estimates as Prefect flows."""

from __future__ import annotations

from typing import Any

__all__ = ["estimate", "heads"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `import llc.sweeps...` in a light worker must not load torch.
    if name == "estimate":
        from llc.run.estimate import estimate

        return estimate
    if name == "heads":
        from llc.modules.heads import heads

        return heads
    raise AttributeError(f"module 'llc' has no attribute {name!r}")
