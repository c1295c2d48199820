"""Data read a batch at a time, never held whole: a DataLoader (its collate_fn), a map-style or iterable
torch Dataset, or a HuggingFace `datasets.Dataset` (its input and target columns). model/streaming.py
draws the minibatches; this module turns the user's object into a `Source` and checks it, once, at
the edge: its items are (input, target) pairs that batch to one shape, and there is data at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset, default_collate

from llc.errors import ConfigError
from llc.model.posterior import Batch
from llc.model.streaming import Source
from llc.modules.model import CHUNK

Collate = Callable[[list[Any]], Any]


def is_streamed(data: Any) -> bool:
    """Whether `data` is read batch by batch: anything but an (x, y) pair of tensors or a TensorDataset,
    alone or in a DataLoader that batches it as they are (held in memory already, they are used as such)."""
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        return False
    if isinstance(data, DataLoader) and data.collate_fn is default_collate:
        data = data.dataset
    return not isinstance(data, TensorDataset) and (isinstance(data, DataLoader | Dataset) or _is_table(data))


def loader_batch_size(data: Any) -> int | None:
    """A DataLoader's batch size: a run's default minibatch size."""
    return data.batch_size if isinstance(data, DataLoader) else None


def as_source(data: Any, dtype: torch.dtype, columns: Sequence[str] | None = None) -> Source:
    """The Source of a DataLoader, Dataset or HuggingFace dataset, its floating-point data in `dtype`."""
    collate: Collate = default_collate
    if isinstance(data, DataLoader):
        if data.batch_size is not None:
            collate = data.collate_fn
        data = data.dataset
    if _is_table(data) and collate is default_collate:
        return TableSource(data, _columns(data, columns), dtype)
    if columns is not None:
        raise ConfigError(
            "columns= names the input and target of a HuggingFace dataset; this data is not one"
        )
    if isinstance(data, IterableDataset):
        return StreamSource(data, collate, dtype)
    if not hasattr(data, "__len__"):
        raise ConfigError(
            f"data: a {type(data).__name__} without len() is not a map-style Dataset; "
            "subclass torch.utils.data.IterableDataset for a stream"
        )
    return MapSource(data, collate, dtype)


class MapSource:
    """A map-style Dataset: points fetched by index and batched by its collate function."""

    random_access = True

    def __init__(self, dataset: Any, collate: Collate, dtype: torch.dtype) -> None:
        self.dataset, self.collate, self.dtype = dataset, collate, dtype
        self.n = len(dataset)

    def take(self, idx: torch.Tensor) -> Batch:
        # A dataset may fetch many items in one call, as a DataLoader asks it to (torch's __getitems__).
        fetch = getattr(self.dataset, "__getitems__", None)
        rows = idx.tolist()
        items = fetch(rows) if fetch is not None else [self.dataset[i] for i in rows]
        return _pair(_collate(self.collate, items), self.dtype)

    def chunks(self) -> Iterator[Batch]:
        for start in range(0, self.n, CHUNK):
            yield self.take(torch.arange(start, min(self.n, start + CHUNK)))


class TableSource:
    """A HuggingFace dataset: rows fetched by index from its input and target columns, read as Arrow
    arrays (5x faster than its torch format) and shaped as its torch format shapes the first row."""

    random_access = True

    def __init__(self, table: Any, columns: tuple[str, str], dtype: torch.dtype) -> None:
        self.table = table.with_format("arrow", columns=list(columns))
        self.columns, self.dtype = columns, dtype
        self.n = len(table)
        first = table.with_format("torch", columns=list(columns))[0] if self.n else {}
        self.shapes = {c: tuple(t.shape) for c, t in first.items() if isinstance(t, torch.Tensor)}

    def take(self, idx: torch.Tensor) -> Batch:
        return self._rows(self.table[idx.tolist()])

    def chunks(self) -> Iterator[Batch]:
        for start in range(0, self.n, CHUNK):
            yield self._rows(self.table[start : start + CHUNK])

    def _rows(self, rows: Any) -> Batch:
        x, y = (self._column(rows, c) for c in self.columns)
        return _pair((x, y), self.dtype)

    def _column(self, rows: Any, name: str) -> torch.Tensor:
        """A column of Arrow rows as one tensor [rows, *shape]: its nested lists flattened to numbers."""
        import pyarrow as pa

        values = rows.column(name).combine_chunks()
        while (
            pa.types.is_list(values.type)
            or pa.types.is_large_list(values.type)
            or (pa.types.is_fixed_size_list(values.type))
        ):
            values = values.flatten()
        array = values.to_numpy(zero_copy_only=False)
        shape = self.shapes.get(name)
        if shape is None or array.dtype.kind not in "biuf" or array.size != rows.num_rows * math.prod(shape):
            raise ConfigError(
                f"data: the column {name!r} does not hold numbers of one shape per row; pad them to one "
                "shape, or pass a DataLoader over the dataset with a collate_fn that returns (x, y)"
            )
        return torch.tensor(array).reshape(rows.num_rows, *shape)


class StreamSource:
    """An IterableDataset: its items read in order, batched by the collate function, the stream read
    again for each epoch. `n` is counted by the first pass over it (`check`)."""

    random_access = False

    def __init__(self, dataset: IterableDataset, collate: Collate, dtype: torch.dtype) -> None:
        self.dataset, self.collate, self.dtype = dataset, collate, dtype
        self.n = 0

    def take(self, idx: torch.Tensor) -> Batch:
        raise NotImplementedError("an iterable dataset has no index")

    def chunks(self) -> Iterator[Batch]:
        items = iter(self.dataset)
        while chunk := list(islice(items, CHUNK)):
            yield _pair(_collate(self.collate, chunk), self.dtype)


SOURCES = (MapSource, TableSource, StreamSource)


def check(source: Source, digest: Any | None = None) -> Batch:
    """Read the source once: its items are (input, target) pairs of one shape per point, and it has at
    least two; a stream's n is counted. Each chunk goes into `digest` (the data's part of the run's id)
    when one is given. Returns the first points (the data's dtype and shapes)."""
    first: Batch | None = None
    count = 0
    for x, y in source.chunks():
        if first is None:
            first = (x[:2], y[:2])
        elif x.shape[1:] != first[0].shape[1:] or y.shape[1:] != first[1].shape[1:]:
            raise ConfigError(
                f"data: points from {count} on have shape {list(x.shape[1:])} -> {list(y.shape[1:])}, those "
                f"before {list(first[0].shape[1:])} -> {list(first[1].shape[1:])}; give every input (and "
                "every target) one shape, or pass a DataLoader whose collate_fn pads them"
            )
        check_finite(x, y, count)
        if digest is not None:
            for t in (x, y):
                digest.update(f"{t.dtype}:{tuple(t.shape)}".encode())
                digest.update(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        count += x.shape[0]
    if count == 0:
        raise ConfigError("data: the dataset is empty; give it at least two (input, target) pairs")
    if count < 2:
        raise ConfigError(f"data: x and y need the same number (>= 2) of points, got {count}")
    if isinstance(source, StreamSource):
        source.n = count
    assert first is not None
    return first


def check_finite(x: torch.Tensor, y: torch.Tensor, start: int = 0) -> None:
    """NaN or inf in the data (whose first row is row `start`) is a ConfigError naming the first row
    that holds one."""
    for name, t in (("x", x), ("y", y)):
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
        if bad.any():
            rows = bad.nonzero().flatten()
            raise ConfigError(
                f"data: {name} holds NaN or inf at row {start + int(rows[0])} ({len(rows)} of {t.shape[0]} "
                f"rows{' from there' if start else ''}); drop or fill those rows"
            )


def fingerprint(source: Source) -> tuple[str, Batch]:
    """A hash of all the source's points, read a chunk at a time, and its first points (`check`)."""
    digest = hashlib.sha256()
    first = check(source, digest)
    return digest.hexdigest(), first


def _collate(collate: Collate, items: list[Any]) -> Any:
    try:
        return collate(items)
    except (RuntimeError, TypeError, ValueError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"data: the items do not batch together ({text}); give every input (and every target) one "
            "shape, or pass a DataLoader whose collate_fn pads them"
        ) from None


def _pair(batch: Any, dtype: torch.dtype) -> Batch:
    """A collated batch as (x, y) tensors with the points along the first dimension."""
    if isinstance(batch, dict):
        raise ConfigError(
            f"data: items are dicts (keys {list(batch)}), not (input, target) pairs; for a HuggingFace "
            "dataset name its columns, llc.estimate(..., columns=('input', 'target')), or pass a DataLoader "
            "whose collate_fn returns (x, y)"
        )
    if not isinstance(batch, tuple | list) or len(batch) != 2:
        got = (
            f"{type(batch).__name__} of {len(batch)}"
            if isinstance(batch, tuple | list)
            else type(batch).__name__
        )
        raise ConfigError(
            f"data: each item must be an (input, target) pair, got a {got}; return (x, y) from the "
            "dataset's __getitem__ (or __iter__), or a collate_fn that returns (x, y)"
        )
    try:
        x, y = (t if isinstance(t, torch.Tensor) else torch.as_tensor(t) for t in batch)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"data: an item's input or target is not a tensor or array ({exc})") from None
    if x.dim() == 0 or y.dim() == 0 or x.shape[0] != y.shape[0]:
        raise ConfigError(
            f"data: a batch collated to x {list(x.shape)} and y {list(y.shape)}, not the same number of "
            "points; the collate_fn must stack the items' inputs and targets along the first dimension"
        )
    return tuple(t.detach().to(dtype) if t.is_floating_point() else t.detach() for t in (x, y))  # type: ignore[return-value]


def _is_table(data: Any) -> bool:
    """A HuggingFace `datasets.Dataset` (recognized without importing `datasets`)."""
    return type(data).__module__.startswith("datasets.") and hasattr(data, "column_names")


def _columns(table: Any, columns: Sequence[str] | None) -> tuple[str, str]:
    names = list(table.column_names)
    if columns is None:
        if len(names) != 2:
            raise ConfigError(
                f"data: the HuggingFace dataset has columns {names}; name the input and the target, "
                "llc.estimate(..., columns=('image', 'label')), or select two with select_columns"
            )
        return names[0], names[1]
    if len(columns) != 2 or not all(c in names for c in columns):
        raise ConfigError(
            f"columns={list(columns)!r}: give two of the dataset's columns {names}, the input then the target"
        )
    return columns[0], columns[1]
