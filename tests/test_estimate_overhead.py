"""What a call of llc.estimate costs besides its sampling: a model of a structure seen before is not
exported again, and a call without runs_dir writes nothing; neither changes the draws."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

import llc
from llc.modules import graph_cache

FAST = {"chains": 2, "steps": 20, "warmup": 0, "step_size": 1e-3, "gamma": 100.0, "batch_size": 16}


class Bent(torch.nn.Module):
    """Not a stack of common layers, so its forward runs as an exported graph (modules/graph.py)."""

    def __init__(self, width: int = 5, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = scale
        self.a, self.b = torch.nn.Linear(3, width), torch.nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.sin(self.scale * self.a(x)))


def bent(seed: int, **kwargs: float) -> Bent:
    torch.manual_seed(seed)
    return Bent(**kwargs)


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=gen)
    return x, x.sum(dim=1, keepdim=True).sin()


@pytest.fixture
def exports(monkeypatch: pytest.MonkeyPatch) -> list[torch.nn.Module]:
    """The modules exported from now on (the real export runs), with no graphs shared before."""
    monkeypatch.setattr(graph_cache, "_shared", type(graph_cache._shared)())
    exported: list[torch.nn.Module] = []
    real = graph_cache.export_forward

    def counting(module: torch.nn.Module, x: torch.Tensor) -> graph_cache.Exported | None:
        exported.append(module)
        return real(module, x)

    monkeypatch.setattr(graph_cache, "export_forward", counting)
    return exported


def test_a_second_call_on_a_model_of_the_same_structure_does_not_export_again(exports):
    first = llc.estimate(bent(0), data(), **FAST)
    assert exports and first.metrics["chains_diverged"] == 0
    seen = len(exports)
    shared = llc.estimate(bent(1), data(), **FAST)  # another checkpoint: other weights
    assert len(exports) == seen
    graph_cache._shared.clear()
    own = llc.estimate(bent(1), data(), **FAST)  # the same checkpoint, exported afresh
    assert len(exports) > seen
    np.testing.assert_array_equal(shared.idata.posterior["llc"], own.idata.posterior["llc"])
    assert shared.llc_mean != first.llc_mean


def test_a_model_of_another_structure_or_setting_is_exported_again(exports):
    llc.estimate(bent(0), data(), **FAST)
    seen = len(exports)
    llc.estimate(bent(0, width=6), data(), **FAST)
    assert len(exports) > seen
    seen = len(exports)
    llc.estimate(bent(0, scale=2.0), data(), **FAST)  # same weights' shapes, another forward
    assert len(exports) > seen


def test_without_runs_dir_a_call_writes_nothing_and_draws_what_a_run_directory_holds(tmp_path, monkeypatch):
    scratch, work = tmp_path / "tmp", tmp_path / "work"
    scratch.mkdir()
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(work)
    in_memory = llc.estimate(bent(0), data(), **FAST)
    assert os.listdir(scratch) == [] and os.listdir(work) == []
    assert in_memory.run_dir is None and in_memory.idata.posterior["llc"].shape == (2, 20)
    written = llc.estimate(bent(0), data(), runs_dir=tmp_path / "runs", **FAST)
    assert written.run_dir is not None and any(written.run_dir.glob("*.png"))
    np.testing.assert_array_equal(in_memory.idata.posterior["llc"], written.idata.posterior["llc"])
    assert in_memory.metrics["llc_mean"] == written.metrics["llc_mean"]
    assert in_memory.metrics["run_id"] == written.metrics["run_id"]
