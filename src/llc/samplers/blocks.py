"""Chains advanced in blocks: random streams of a few chains, blocks spread over CPU cores.

At LLC sizes a step is dozens of small operations on [chains, batch, width] tensors. Splitting one
step across cores inside each operation (torch's intra-op threads) pays a fork-join per operation
and streams tensors larger than a core's cache. Here each core instead advances its own contiguous
share of the chains, start to end, with one torch thread, on tensors that stay in its cache.

Random numbers come from one stream per STREAM chains, whatever the number of cores, so a run gives
the same numbers on a laptop and on a 64-core node. A run with at most STREAM chains uses the
caller's generator, exactly as an unblocked kernel would. A block is the chains one call computes:
whole streams, at most UNIT chains. Where the blocks fall depends on the number of chains and on
whether the step is compiled, never on the number of cores, so the cores cannot change a result.
A run split across devices (run/devices.py) gives each device a `share` of whole streams, seeded as
in the whole run, so the split cannot change a result either.

Eager steps hold Python's interpreter lock between torch operations, so two threads with small
blocks mostly wait for each other: eager blocks are UNIT chains and a core takes at least UNIT
chains. A compiled step (`fused`) runs as one C++ call that releases the lock, so its blocks shrink
(to STREAM chains at the least) until every core has one: 8 chains run as two blocks of 4 on 2 cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from llc.samplers.base import Recorder
from llc.samplers.registry import STREAM
from llc.threads import cpu_threads

log = logging.getLogger(__name__)

UNIT = 16  # most chains one call computes: its [chains, batch, width] tensors stay in a core's cache
_pool: ThreadPoolExecutor | None = None


@dataclass(frozen=True)
class Stream:
    start: int
    stop: int
    gen: torch.Generator


@dataclass(frozen=True)
class Block:
    """Consecutive chains computed together, with the streams that draw their random numbers."""

    start: int
    stop: int
    streams: tuple[Stream, ...]

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def chains(self) -> slice:
        return slice(self.start, self.stop)

    def normal(self, like: torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like `like` (the block's rows), each stream drawing its rows."""
        if len(self.streams) == 1:  # the same numbers as the loop below, in one call
            gen = self.streams[0].gen
            return torch.randn(like.shape, generator=gen, dtype=like.dtype, device=like.device)
        out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        for s in self.streams:
            out[s.start - self.start : s.stop - self.start].normal_(generator=s.gen)
        return out

    def indices(self, high: int, count: int, device: torch.device) -> torch.Tensor:
        """`count` integers uniform in [0, high) per chain: [size, count]."""
        if len(self.streams) == 1:
            return torch.randint(0, high, (self.size, count), generator=self.streams[0].gen, device=device)
        out = torch.empty((self.size, count), dtype=torch.long, device=device)
        for s in self.streams:
            out[s.start - self.start : s.stop - self.start].random_(0, high, generator=s.gen)
        return out

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """Uniform [0, 1) numbers shaped like `like` (the block's rows), each stream drawing its rows."""
        if len(self.streams) == 1:
            return torch.rand(like.shape, generator=self.streams[0].gen, dtype=like.dtype, device=like.device)
        out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
        for s in self.streams:
            out[s.start - self.start : s.stop - self.start].uniform_(generator=s.gen)
        return out


Share = tuple[int, int]  # (first chain, chains of the whole run): a device's part of a split run


def layout(chains: int, gen: torch.Generator, fused: bool, share: Share | None = None) -> list[Block]:
    """The blocks of a run: streams seeded from `gen` (or `gen` itself for few chains or off the CPU,
    where all chains make one block), grouped into blocks as described above. With `share`, the
    `chains` are those from share[0] of a run of share[1] chains, with that run's streams."""
    if gen.device.type != "cpu":
        return [Block(0, chains, tuple(streams(chains, gen, share)))]
    return _group(streams(chains, gen, share), fused)


def streams(chains: int, gen: torch.Generator, share: Share | None = None) -> list[Stream]:
    """The random streams of `chains` chains (of the share of a larger run, with `share`), from 0;
    off the CPU, one stream of all of them."""
    if gen.device.type != "cpu":
        return [Stream(0, chains, _share_generator(gen, share))]
    if share is None:
        return _streams(chains, gen)
    first, total = share
    return [
        Stream(s.start - first, s.stop - first, s.gen)
        for s in _streams(total, gen)
        if first <= s.start < first + chains
    ]


def _share_generator(gen: torch.Generator, share: Share | None) -> torch.Generator:
    """Off the CPU all chains draw from one generator: a share draws from its own, from its first chain
    (reproducible for the same devices, not the numbers one device draws)."""
    if share is None or share[0] == 0:
        return gen
    return torch.Generator(device=gen.device).manual_seed(gen.initial_seed() + share[0])


def _group(streams: list[Stream], fused: bool) -> list[Block]:
    """Consecutive streams grouped into blocks of UNIT chains (fused: fewer, while there are < 2 blocks)."""
    chains = streams[-1].stop
    size = UNIT
    while fused and size > STREAM and chains < 2 * size:
        size //= 2
    blocks, group = [], []
    for s in streams:
        group.append(s)
        if s.stop - group[0].start >= size or s is streams[-1]:
            blocks.append(Block(group[0].start, s.stop, tuple(group)))
            group = []
    return blocks


def _streams(chains: int, gen: torch.Generator) -> list[Stream]:
    if chains <= STREAM:
        return [Stream(0, chains, gen)]
    starts = range(0, chains, STREAM)
    seeds = torch.randint(0, 2**62, (len(starts),), generator=gen).tolist()
    return [
        Stream(start, min(chains, start + STREAM), torch.Generator().manual_seed(seed))
        for start, seed in zip(starts, seeds, strict=True)
    ]


def cpu_parts(device: torch.device, blocks: list[Block], fused: bool) -> int:
    """How many cores share the blocks: every core torch may use, each with at least one block, and
    for eager steps at least UNIT chains (torch's own intra-op threads serve fewer better); 1 off the CPU."""
    if device.type != "cpu":
        return 1
    most = min(torch.get_num_threads(), os.cpu_count() or 1, len(blocks))
    if not fused:
        most = min(most, sum(b.size for b in blocks) // UNIT)
    return max(1, most)


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


def run_steps(work: Callable[[Block, int], None], blocks: list[Block], parts: int, count: int) -> None:
    """`work(block, j)` for steps j = 0..count-1 of every block. Each group of `split` runs its steps
    start to end on its own thread (the first in this thread, the others on pool threads), meeting
    the others only at the end: a core that waits for its neighbour at every step loses more time
    waking up than at LLC sizes a step takes."""

    def share(group: list[Block]) -> None:
        for block in group:  # block by block: a block's chains and buffers stay in cache for its steps
            for j in range(count):
                work(block, j)

    if count <= 0:
        return
    groups = split(blocks, parts)
    if len(groups) == 1:
        share(groups[0])
        return
    global _pool
    if _pool is None:
        workers = max(1, (os.cpu_count() or 2) - 1)
        _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="llc-chains")
    futures = [_pool.submit(share, group) for group in groups[1:]]
    try:
        share(groups[0])
    finally:
        for future in futures:
            future.result()


def compile_step(fn: Callable, device: torch.device) -> Callable:
    """torch.compile for a whole block step; on the CPU with a C++ wrapper, so that the step is one
    call that releases the interpreter lock and blocks on several cores run truly at once."""
    options = {"cpp_wrapper": True} if device.type == "cpu" else {}
    return torch.compile(fn, dynamic=False, options=options)


class CompileFailed(RuntimeError):
    """compile=true and the block step could not be compiled."""


class BlockedChains:
    """What SGLD and SGHMC share: chains in blocks (`state.blocks`, which hold their random streams)
    spread over the cores, advanced several steps per call, each block by `_step_block`."""

    fused: bool  # the whole block step is one compiled call (compile_step)
    parts: int = 1  # cores the blocks are spread over (`prepare`)
    _compiled_step: Callable | None = None

    @property
    def torch_threads(self) -> int:
        # Each core runs its share on one torch thread (and a compiled step is compiled for that count).
        return 1 if self.parts > 1 else 0

    def prepare(self, state: Any, fall_back: bool) -> Any:
        """Spread the blocks over this machine's cores, and compile the fused step now for every block
        shape, before any random number is drawn. If that fails and the run may fall back
        (compile=auto), it goes on eager with the same streams (so with the numbers an eager run has);
        with compile=true the failure is the run's error."""
        device = self.position(state).device
        self.parts = cpu_parts(device, state.blocks, self.fused)
        if not self.fused:
            return state
        try:
            with cpu_threads(self.torch_threads):
                for block in {b.size: b for b in state.blocks}.values():
                    self._compile_block(state, block)
        except Exception as exc:
            if not fall_back:
                raise CompileFailed(
                    f"compile=true could not compile the sampler's step ({type(exc).__name__}: {exc}). It "
                    "needs a C++ compiler and Python's headers (`make env` installs both); or set "
                    "compile=auto, which then runs eager, or compile=false"
                ) from exc
            log.warning(
                "compiling the sampler's step failed (%s: %s); running eager", type(exc).__name__, exc
            )
            self.fused, self._compiled_step = False, None
            state.blocks = _group([s for b in state.blocks for s in b.streams], fused=False)
            self.parts = cpu_parts(device, state.blocks, fused=False)
        return state

    def _compile_block(self, state: Any, block: Block) -> None:
        """Call the compiled step once on the block's shapes (placeholder inputs; nothing is updated)."""
        raise NotImplementedError

    def position(self, state: Any) -> torch.Tensor:
        return state.w

    def _step_block(self, state: Any, block: Block, j: int) -> torch.Tensor:
        """Step j of this call for the block's chains, in place; returns their losses."""
        raise NotImplementedError

    def advance(self, state: Any, count: int, tune: bool, recorder: Recorder) -> Any:
        def work(block: Block, j: int) -> None:
            recorder.position(j, block.chains, state.w[block.chains])
            recorder.loss(j, block.chains, self._step_block(state, block, j))

        run_steps(work, state.blocks, self.parts, count)  # `prepare` has compiled every block shape
        return state
