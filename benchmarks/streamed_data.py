"""Streamed data: SGLD sampling time when the data is read a batch at a time, against the same run on
tensors, in one invocation (interleaved rounds; each ratio is the median of the per-round ratios).

The model is an MLP classifier of the digits benchmark's size (64 -> 32 -> 10, 2,410 parameters) on n
synthetic points; 8 chains, batch 64. The sources: (x, y) tensors (the baseline), a DataLoader over a
map-style Dataset (one __getitem__ per point), the same Dataset with a __getitems__ (one call per
minibatch), an IterableDataset, and a HuggingFace dataset (if `datasets` is installed).

    python benchmarks/streamed_data.py [--rounds 3] [--steps 200] [--n 4096] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

import llc

CHAINS, BATCH = 8, 64


class Points(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


class BatchedPoints(Points):
    def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        x, y = self.x[rows], self.y[rows]
        return list(zip(x, y, strict=True))


class PointStream(IterableDataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return zip(self.x, self.y, strict=True)


def sources(x: torch.Tensor, y: torch.Tensor) -> dict[str, Callable[[], Any]]:
    made: dict[str, Callable[[], Any]] = {
        "tensors": lambda: (x, y),
        "map-style Dataset": lambda: DataLoader(Points(x, y), batch_size=BATCH),
        "Dataset with __getitems__": lambda: DataLoader(BatchedPoints(x, y), batch_size=BATCH),
        "IterableDataset": lambda: DataLoader(PointStream(x, y), batch_size=BATCH),
    }
    try:
        import datasets
    except ImportError:
        return made
    table = datasets.Dataset.from_dict({"x": x.numpy(), "y": y.numpy()})
    made["HuggingFace dataset"] = lambda: table
    return made


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--n", type=int, default=4096)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.n, 64, generator=gen)
    y = (x[:, :10] + 0.5 * torch.randn(args.n, 10, generator=gen)).argmax(dim=1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 10))
    run = {"loss": "cross_entropy", "chains": CHAINS, "steps": args.steps, "warmup": 0, "batch_size": BATCH,
           "step_size": 1e-4, "gamma": 100.0, "threads": 1}  # fmt: skip
    made = sources(x, y)
    llc.estimate(model, made["tensors"](), **{**run, "steps": 10})  # first-call costs out of the rounds
    seconds: dict[str, list[float]] = {name: [] for name in made}
    for _ in range(args.rounds):
        for name, make in made.items():
            seconds[name].append(llc.estimate(model, make(), **run).metrics["t_sampling_s"])
    base = seconds["tensors"]
    result = {
        name: {
            "sampling_s": statistics.median(times),
            "vs_tensors": statistics.median(t / b for t, b in zip(times, base, strict=True)),
        }
        for name, times in seconds.items()
    }
    for name, row in result.items():
        print(f"{name:28s} {row['sampling_s']:7.3f} s   {row['vs_tensors']:5.2f}x tensors")
    if args.json:
        with open(args.json, "w") as out:
            json.dump(
                {"n": args.n, "steps": args.steps, "chains": CHAINS, "batch": BATCH, **result}, out, indent=1
            )


if __name__ == "__main__":
    main()
