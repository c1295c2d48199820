"""Chains advanced in blocks: one random stream per block, and blocks spread over CPU cores.

At LLC sizes a step is dozens of small operations on [chains, batch, width] tensors. Splitting one
step across cores inside each operation (torch's intra-op threads) pays a fork-join per operation
and streams tensors larger than a core's cache. Here each core instead advances its own contiguous
share of the chains, start to end, with one torch thread, on tensors that stay in its cache.

Random numbers come from one stream per block of BLOCK chains, whatever the number of cores, so a
run gives the same numbers on a laptop and on a 64-core node. A run with at most BLOCK chains uses
the caller's generator, exactly as an unblocked kernel would. A block is also what a core computes
at once: its [chains, batch, width] tensors stay in the core's cache.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

BLOCK = 16  # chains per random stream, and per computation on one core
_pool: ThreadPoolExecutor | None = None

T = TypeVar("T")


@dataclass(frozen=True)
class Block:
    start: int
    stop: int
    gen: torch.Generator

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def chains(self) -> slice:
        return slice(self.start, self.stop)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (the block's rows), from the block's stream."""
        return torch.randn(like.shape, generator=self.gen, dtype=like.dtype, device=like.device)


def make_blocks(chains: int, gen: torch.Generator) -> list[Block]:
    """BLOCK-chain blocks with their own streams, seeded from `gen`; one block on `gen` for few chains."""
    if chains <= BLOCK:
        return [Block(0, chains, gen)]
    count = math.ceil(chains / BLOCK)
    seeds = torch.randint(0, 2**62, (count,), generator=gen, device=gen.device).tolist()
    return [
        Block(b * BLOCK, min(chains, (b + 1) * BLOCK), torch.Generator(device=gen.device).manual_seed(seed))
        for b, seed in enumerate(seeds)
    ]


def cpu_parts(device: torch.device, blocks: list[Block]) -> int:
    """How many cores share the chains: every core torch may use, each with at least BLOCK chains
    (fewer chains per core lose more to handing the interpreter lock between threads than they gain,
    and torch's own intra-op threads serve them better); 1 off the CPU."""
    if device.type != "cpu":
        return 1
    chains = sum(b.size for b in blocks)
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1, len(blocks), chains // BLOCK))


def split(blocks: list[Block], parts: int) -> list[list[Block]]:
    """Contiguous groups of blocks, as equal in chains as can be."""
    total = sum(b.size for b in blocks)
    groups: list[list[Block]] = [[] for _ in range(parts)]
    done = 0
    for block in blocks:
        part = min(parts - 1, done * parts // total)
        groups[part].append(block)
        done += block.size
    return [g for g in groups if g]


def run_parts(work: Callable[[list[Block]], T], groups: list[list[Block]]) -> list[T]:
    """`work` on each group at once: the first in this thread, the others on pool threads."""
    if len(groups) == 1:
        return [work(groups[0])]
    global _pool
    if _pool is None:
        workers = max(1, (os.cpu_count() or 2) - 1)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llc-chains")
    futures = [_pool.submit(work, group) for group in groups[1:]]
    first = work(groups[0])
    return [first, *(f.result() for f in futures)]
