"""The posterior on data read in pieces (a DataLoader, a Dataset, an IterableDataset, a HuggingFace
dataset), never held whole: problems/stream.py makes the `Source`, this module draws from it.

Each chain's minibatches are drawn without replacement within an epoch. From data with an index
(map-style), a chain walks one random permutation of the n points after another, drawn from its block's
random streams; from a stream without one (iterable), a block reads consecutive points, from an offset
its streams draw, the stream read again from its start at each epoch, and its chains take consecutive
minibatches of what it read. Full-data passes (L0, hmc, mclmc, evaluation) go chunk by chunk.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

import torch

from llc.model.posterior import Batch, GradFn, LocalizedPosterior
from llc.model.protocol import Minibatches, Model


class Source(Protocol):
    """n points read a chunk at a time; by index too where `random_access`."""

    @property
    def n(self) -> int: ...

    @property
    def random_access(self) -> bool: ...

    def take(self, idx: torch.Tensor) -> Batch:
        """The points at indices idx [k] (random_access only): ([k, ...], [k, ...])."""
        ...

    def chunks(self) -> Iterator[Batch]:
        """All n points in order, a bounded number at a time."""
        ...


def streamed_loss(model: Model, source: Source, w: torch.Tensor) -> torch.Tensor:
    """The mean loss over all n points [chains], one chunk at a time."""
    total = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for x, y in source.chunks():
        total.add_(model.batch_loss(w, x.to(w.device), y.to(w.device)), alpha=x.shape[0] / source.n)
    return total


def streamed_loss_and_grad(
    grad_fn: GradFn, source: Source, w: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean loss over all n points [chains] and its gradient [chains, d], one chunk at a time."""
    loss = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    grad = torch.zeros_like(w)
    for x, y in source.chunks():
        part = x.shape[0] / source.n
        chunk_loss, chunk_grad = grad_fn(w, x.to(w.device), y.to(w.device))
        loss.add_(chunk_loss, alpha=part)
        grad.add_(chunk_grad, alpha=part)
    return loss, grad


class Cursor:
    """Consecutive points of a source, epoch after epoch: at its end the source is read again."""

    def __init__(self, source: Source) -> None:
        self.source = source
        self._chunks: Iterator[Batch] = iter(())
        self._left: Batch | None = None

    def next(self, count: int) -> Batch:
        xs, ys = [], []
        while count > 0:
            x, y = self._take(count)
            xs.append(x)
            ys.append(y)
            count -= x.shape[0]
        return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))

    def skip(self, count: int) -> None:
        while count > 0:
            count -= self._take(count)[0].shape[0]

    def _take(self, most: int) -> Batch:
        """Up to `most` points from the chunk at hand (the next one, or the first of a new epoch)."""
        while self._left is None:
            # A source is never empty (problems/stream.py checks), so a new epoch has a first chunk.
            self._left = next(self._chunks, None)
            if self._left is None:
                self._chunks = iter(self.source.chunks())
        x, y = self._left
        k = min(most, x.shape[0])
        self._left = None if k == x.shape[0] else (x[k:], y[k:])
        return x[:k], y[:k]


class Permutations:
    """One block's minibatch indices: per chain, one random permutation of the n points after another
    (each from the chain's stream), so every point is drawn once per chain and epoch."""

    def __init__(self, streams: tuple, n: int) -> None:
        self.streams, self.n = streams, n
        self.order, self.at = self._epoch(), 0

    def _epoch(self) -> torch.Tensor:
        # int32 where it holds n: the permutations are the one thing held per point and chain
        dtype = torch.int32 if self.n < 2**31 else torch.long
        return torch.stack(
            [
                torch.randperm(self.n, generator=s.gen, device=s.gen.device, dtype=dtype)
                for s in self.streams
                for _ in range(s.stop - s.start)
            ]
        )

    def next(self, count: int) -> torch.Tensor:
        parts = []
        while count > 0:
            if self.at == self.n:
                self.order, self.at = self._epoch(), 0
            k = min(count, self.n - self.at)
            parts.append(self.order[:, self.at : self.at + k])
            self.at += k
            count -= k
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


class Consecutive:
    """One block's minibatches from a stream without an index: consecutive points from an offset its
    first stream draws; the block's chains take consecutive minibatches of each read. The indices
    returned are the points' positions in the stream."""

    def __init__(self, streams: tuple, source: Source) -> None:
        self.chains = sum(s.stop - s.start for s in streams)
        self.n = source.n
        self.cursor = Cursor(source)
        self.at = int(torch.randint(self.n, (1,), generator=streams[0].gen, device=streams[0].gen.device))
        self.cursor.skip(self.at)

    def next(self, count: int) -> tuple[torch.Tensor, Batch]:
        x, y = self.cursor.next(self.chains * count)
        idx = (self.at + torch.arange(self.chains * count)).remainder_(self.n).view(self.chains, count)
        self.at = (self.at + self.chains * count) % self.n
        return idx, (x.reshape(self.chains, count, *x.shape[1:]), y.reshape(self.chains, count, *y.shape[1:]))


@dataclass
class StreamingPosterior(LocalizedPosterior):
    """The localized posterior on a `Source`: `x` and `y` hold only its first points (the data's dtype,
    shapes and device); minibatches and full-data passes read the source."""

    source: Source | None = None
    _draws: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        # A minibatch of all n points would hold the data whole (problems/module.py refuses it).
        assert self.source is not None and (self.batch_size is None or self.batch_size < self.source.n)
        self._read = threading.local()  # the batch a block's thread read with its last indices (iterable)
        self._side: Cursor | None = None

    @property
    def n(self) -> int:
        assert self.source is not None
        return self.source.n

    def indices(self, block: Minibatches) -> torch.Tensor | None:
        """The block's next minibatch per chain [chains, batch], without replacement within an epoch;
        a block's state is kept by its random streams (the same streams always draw the same batches)."""
        assert self.source is not None
        if self.batch_size is None:
            return None
        streams = block.streams
        draws = self._draws.get(streams)
        if draws is None:
            draws = (
                Permutations(streams, self.n)
                if self.source.random_access
                else Consecutive(streams, self.source)
            )
            self._draws[streams] = draws
        if isinstance(draws, Permutations):
            return draws.next(self.batch_size)
        idx, batch = draws.next(self.batch_size)
        self._read.last = (idx, batch)
        return idx

    def placeholder_indices(self, chains: int) -> torch.Tensor | None:
        raise NotImplementedError("streamed data is not compiled (problems/module.py refuses compile=true)")

    def batch_at(self, idx: torch.Tensor | None) -> Batch:
        assert idx is not None  # a stream is never read whole: batch_size < n (problems/module.py)
        last = getattr(self._read, "last", None)
        if last is not None and last[0] is idx:
            x, y = last[1]
            return x.to(self.x.device), y.to(self.x.device)
        return self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        """The points at idx [chains, batch]. A stream without an index has no random access: it serves
        the next points of a cursor of its own instead, as good a minibatch for the noise estimates that
        ask for random ones (samplers/step_search.py)."""
        assert self.source is not None
        if self.source.random_access:
            x, y = self.source.take(idx.reshape(-1).cpu())
        else:
            if self._side is None:
                self._side = Cursor(self.source)
            x, y = self._side.next(idx.numel())
        x, y = x.to(self.x.device), y.to(self.x.device)
        return x.reshape(*idx.shape, *x.shape[1:]), y.reshape(*idx.shape, *y.shape[1:])

    def data_loss_and_grad(self, w: torch.Tensor, batch: Batch | None) -> tuple[torch.Tensor, torch.Tensor]:
        if batch is not None:
            return super().data_loss_and_grad(w, batch)
        assert self.source is not None and self.grad_fn is not None
        return streamed_loss_and_grad(self.grad_fn, self.source, w)

    def full_loss(self, w: torch.Tensor) -> torch.Tensor:
        assert self.source is not None
        return streamed_loss(self.model, self.source, w)
