"""How many CPU threads torch uses while a run computes.

Waking a second OpenMP thread costs tens to hundreds of microseconds on small VMs, more than a
small model's whole step: below SMALL_STEP multiply-adds per step one thread is several times
faster; above it, the default (all cores) wins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SMALL_STEP = 2_000_000


def threads_for(requested: int, multiply_adds_per_step: int) -> int:
    """The thread count to use: as requested, or 1 for small steps (0 keeps torch's default)."""
    if requested > 0:
        return requested
    return 1 if multiply_adds_per_step < SMALL_STEP else 0


@contextmanager
def cpu_threads(count: int) -> Iterator[None]:
    """Use `count` torch threads inside the block (0: leave as is)."""
    if count <= 0:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
