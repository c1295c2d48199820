"""Data that need not fit in memory: llc.estimate reads a DataLoader, a map-style or iterable Dataset or a
HuggingFace dataset a batch at a time, each chain drawing without replacement within an epoch, and
gives the estimate of the same data as tensors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import llc
import llc.problems.stream
import llc.run.plots
from llc.config import build_config
from llc.errors import ConfigError
from llc.model.streaming import StreamingPosterior
from llc.modules.model import ModuleModel, per_example_mse
from llc.problems.stream import MapSource, StreamSource
from llc.run.estimate import Estimate
from llc.run.experiment import run_llc
from llc.samplers.blocks import layout

N = 400
gen = torch.Generator().manual_seed(0)
X = torch.randn(N, 3, generator=gen)
Y = X @ torch.randn(3, 2, generator=gen) + 0.1 * torch.randn(N, 2, generator=gen)


def fitted() -> torch.nn.Linear:
    """A linear regression at its least-squares fit: a regular model, λ = d/2 = 4."""
    model = torch.nn.Linear(3, 2)
    solution = torch.linalg.lstsq(torch.cat([X, torch.ones(N, 1)], dim=1), Y).solution
    with torch.no_grad():
        model.weight.copy_(solution[:3].T)
        model.bias.copy_(solution[3])
    return model


class Pairs(Dataset):
    """(x, y) pairs by index, counting the items read."""

    def __init__(self, x: torch.Tensor = X, y: torch.Tensor = Y) -> None:
        self.x, self.y, self.reads = x, y, 0

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.reads += 1
        return self.x[i], self.y[i]


class Stream(IterableDataset):
    """(x, y) pairs in order, counting the passes over them."""

    def __init__(self) -> None:
        self.passes = 0

    def __iter__(self):
        self.passes += 1
        return zip(X, Y, strict=True)


RUN = {"chains": 4, "steps": 100, "warmup": 20, "step_size": 5e-4, "seed": 3}
SHORT = {**RUN, "steps": 10, "warmup": 0}


def loss_trace(estimate: Estimate) -> np.ndarray:
    return estimate.idata.posterior["loss"].values


def same_draws(a: Estimate, b: Estimate, rtol: float = 1e-5) -> bool:
    """The same loss trace up to float rounding (two calls in one process differ in the last bits)."""
    return bool(np.allclose(loss_trace(a), loss_trace(b), rtol=rtol, atol=0))


def test_a_dataloader_gives_the_tensor_estimate_within_its_se_and_its_batch_size_is_the_default(tmp_path):
    """A DataLoader over a map-style Dataset is streamed; over a TensorDataset, its tensors are used."""
    tensors = llc.estimate(fitted(), (X, Y), batch_size=40, **RUN)
    loaded = llc.estimate(fitted(), DataLoader(Pairs(), batch_size=40), runs_dir=tmp_path, **RUN)
    assert json.loads((loaded.run_dir / "config.json").read_text())["batch_size"] == 40
    assert loaded.metrics["L0"] == pytest.approx(tensors.metrics["L0"], rel=1e-6)
    assert not same_draws(loaded, tensors)  # drawn differently: without replacement
    in_memory = llc.estimate(fitted(), DataLoader(TensorDataset(X, Y), batch_size=40), **RUN)
    assert same_draws(in_memory, tensors)  # tensors in a DataLoader are used as tensors
    se = math.hypot(tensors.llc_se, loaded.llc_se)
    assert abs(loaded.llc_mean - tensors.llc_mean) < 3 * se, (loaded.llc_mean, tensors.llc_mean, se)


def test_every_chain_draws_every_point_once_per_epoch_and_the_same_seed_draws_the_same():
    model = ModuleModel(fitted(), per_example_mse, 1)
    source = MapSource(Pairs(X[:10], Y[:10]), torch.utils.data.default_collate, torch.float32)

    def draws(seed: int) -> torch.Tensor:
        posterior = StreamingPosterior(
            model, X[:2], Y[:2], model.flat_parameters(), 1.0, 1.0, batch_size=3, source=source
        )
        blocks = layout(8, torch.Generator().manual_seed(seed), fused=False)
        return torch.cat([torch.cat([posterior.indices(b) for b in blocks]) for _ in range(10)], dim=1)

    drawn = draws(0)  # [8 chains, 30 draws]: 3 epochs of 10 points
    for epoch in drawn.split(10, dim=1):
        assert (epoch.sort(dim=1).values == torch.arange(10)).all()
    assert len({tuple(chain.tolist()) for chain in drawn}) == 8  # each chain its own order
    assert torch.equal(draws(0), drawn) and not torch.equal(draws(1), drawn)


def test_streamed_data_is_read_a_chunk_or_a_batch_at_a_time_never_whole(monkeypatch):
    monkeypatch.setattr(llc.problems.stream, "CHUNK", 64)
    sizes: list[int] = []

    def collate(items: list) -> tuple[torch.Tensor, torch.Tensor]:
        sizes.append(len(items))
        return torch.utils.data.default_collate(items)

    data = Pairs()
    result = llc.estimate(fitted(), DataLoader(data, batch_size=10, collate_fn=collate), eval_every=25, **RUN)
    assert math.isfinite(result.llc_mean) and result.metrics["n"] == N
    # the largest tensors built hold one chunk (the full-data passes) or one step's minibatches
    assert max(sizes) == 64 < N and RUN["chains"] * 10 in sizes
    assert data.reads >= RUN["steps"] * RUN["chains"] * 10  # every minibatch point was read when drawn


def test_an_iterable_dataset_is_read_again_each_epoch_and_gives_the_estimate():
    stream = Stream()
    result = llc.estimate(fitted(), stream, batch_size=40, **RUN)
    # 120 steps of 4 chains × 40 points read the 400 points 48 times, besides the set-up's passes
    assert stream.passes > 48 and result.metrics["n"] == N
    assert abs(result.llc_mean - 4.0) < 3 * result.llc_se + 0.8  # λ = d/2, read at a finite nβ


def test_blocks_read_a_stream_at_offsets_their_seeds_draw():
    model = ModuleModel(fitted(), per_example_mse, 1)
    source = StreamSource(Stream(), torch.utils.data.default_collate, torch.float32)
    llc.problems.stream.check(source)

    def draws(seed: int) -> torch.Tensor:
        posterior = StreamingPosterior(
            model, X[:2], Y[:2], model.flat_parameters(), 1.0, 1.0, batch_size=30, source=source
        )
        blocks = layout(8, torch.Generator().manual_seed(seed), fused=False)
        drawn = []
        for _ in range(20):  # 20 steps × 8 chains × 30 points: 12 epochs of the 400
            for block in blocks:
                idx = posterior.indices(block)
                x, _ = posterior.batch_at(idx)
                assert torch.equal(x, X[idx])  # the points read are those at the positions drawn
                drawn.append(idx)
        return torch.cat(drawn)

    drawn = draws(0)
    assert torch.equal(draws(0), drawn) and not torch.equal(draws(1), drawn)
    assert source.n == N


def test_a_huggingface_dataset_names_its_columns_and_draws_as_the_same_map_style_dataset():
    import datasets  # here: importing it takes seconds, which only this test should pay

    table = datasets.Dataset.from_dict({"id": list(range(N)), "x": X.tolist(), "y": Y.tolist()})
    run = {**SHORT, "batch_size": 40}
    from_table = llc.estimate(fitted(), table, columns=("x", "y"), **run)
    from_pairs = llc.estimate(fitted(), Pairs(), **run)
    assert same_draws(from_table, from_pairs)
    with pytest.raises(ConfigError, match=r"has columns \['id', 'x', 'y'\]; name the input and the target"):
        llc.estimate(fitted(), table, **run)


def test_hmc_on_streamed_data_takes_its_full_data_gradients_chunk_by_chunk(monkeypatch):
    monkeypatch.setattr(llc.problems.stream, "CHUNK", 64)
    run = {
        "sampler": "hmc",
        "chains": 2,
        "steps": 6,
        "warmup": 2,
        "n_leapfrog": 4,
        "seed": 1,
        "dtype": "float64",
    }
    tensors = llc.estimate(fitted(), (X, Y), **run)
    streamed = llc.estimate(fitted(), Pairs(), **run)
    assert same_draws(streamed, tensors, rtol=1e-4)  # chunked sums: the same up to rounding


def test_a_study_data_factory_may_return_a_dataset(tmp_path, monkeypatch):
    (tmp_path / "streamed_factories.py").write_text(
        "import torch\n\n"
        "class Pairs(torch.utils.data.Dataset):\n"
        "    def __len__(self):\n        return 60\n\n"
        "    def __getitem__(self, i):\n"
        "        g = torch.Generator().manual_seed(i)\n"
        "        return torch.randn(2, generator=g), torch.randn(1, generator=g)\n\n"
        "def model():\n    torch.manual_seed(0)\n    return torch.nn.Linear(2, 1)\n\n"
        "def data():\n    return Pairs()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    values = {"problem": "module", "model": "streamed_factories:model", "data": "streamed_factories:data"}
    config = build_config(None, {**values, "chains": 2, "steps": 10, "warmup": 0, "batch_size": 16})
    metrics = run_llc(config, tmp_path / "runs").metrics
    assert metrics["n"] == 60 and math.isfinite(metrics["llc_mean"])


def test_a_dataset_that_fetches_many_items_at_once_is_asked_for_a_whole_minibatch_per_call():
    class Batched(Pairs):
        def __getitems__(self, rows: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
            self.calls = getattr(self, "calls", 0) + 1
            return [(self.x[i], self.y[i]) for i in rows]

    data = Batched()
    x, y = MapSource(data, torch.utils.data.default_collate, torch.float32).take(torch.tensor([5, 2, 9]))
    assert data.calls == 1 and data.reads == 0
    assert torch.equal(x, X[[5, 2, 9]]) and torch.equal(y, Y[[5, 2, 9]])
