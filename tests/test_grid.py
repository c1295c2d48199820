"""llc.grid: one row per combination of settings, each the estimate llc.estimate makes, reused rather than
recomputed, and every cell's mistakes refused before anything runs."""

from __future__ import annotations

import pytest
import torch

import llc
from llc.errors import ConfigError
from llc.run import grid as grid_module
from llc.run.experiment import LLCExperiment

FIXED = {"chains": 2, "steps": 20, "warmup": 0, "gamma": 100.0, "batch_size": 16}


def model_and_data() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(48, 3, generator=gen)
    return model, (x, x.sum(dim=1, keepdim=True).sin())


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The run_ids computed from now on (the real runs happen), with no cells computed before."""
    monkeypatch.setattr(grid_module, "_computed", {})
    computed: list[str] = []
    real = LLCExperiment.measure

    def counting(self, config, *args, **kwargs):
        computed.append(config.run_id)
        return real(self, config, *args, **kwargs)

    monkeypatch.setattr(LLCExperiment, "measure", counting)
    return computed


def test_a_grid_has_one_row_per_cell_with_the_estimate_of_its_settings(runs):
    model, data = model_and_data()
    table = llc.grid(model, data, step_size=[1e-3, 3e-3], seed=[0, 1], **FIXED)
    assert list(table[["step_size", "seed"]].itertuples(index=False, name=None)) == [
        (1e-3, 0), (1e-3, 1), (3e-3, 0), (3e-3, 1),
    ]  # fmt: skip
    assert {"llc_mean", "llc_se", "trusted", "flags", "ess", "rhat", "run_id"} <= set(table.columns)
    assert table["run_id"].nunique() == 4 and len(runs) == 4
    single = llc.estimate(model, data, step_size=3e-3, seed=1, **FIXED)
    row = table.iloc[3]
    assert (row["llc_mean"], row["llc_se"]) == (single.llc_mean, single.llc_se)
    assert row["run_id"] == single.metrics["run_id"]
    assert row["trusted"] == single.metrics["trusted"] and row["flags"] == single.metrics["flags"]


def test_a_grid_run_again_computes_nothing(runs, tmp_path):
    model, data = model_and_data()
    cells = {"step_size": [1e-3, 2e-3], **FIXED}
    first = llc.grid(model, data, runs_dir=tmp_path, **cells)
    assert len(runs) == 2 and len(list(tmp_path.glob("*/complete.json"))) == 2
    again = llc.grid(model, data, runs_dir=tmp_path, **cells)
    assert len(runs) == 2
    assert again.equals(first)
    in_memory = llc.grid(model, data, **cells)  # without runs_dir: computed once in this process
    assert len(runs) == 4 and in_memory.equals(llc.grid(model, data, **cells)) and len(runs) == 4
    assert list(in_memory["llc_mean"]) == list(first["llc_mean"])


def test_every_cells_mistake_is_one_line_before_anything_runs(runs, tmp_path):
    model, data = model_and_data()
    with pytest.raises(ConfigError) as error:
        llc.grid(model, data, runs_dir=tmp_path / "runs", step_size=[1e-3, -1.0], gamma=[100.0, -1.0])
    message = str(error.value)
    assert "\n" not in message and message.startswith("grid cell step_size=0.001, gamma=-1.0: gamma")
    assert "(and 2 more of the 4 cells)" in message
    with pytest.raises(ConfigError, match=r"step_size=\[\]: a grid axis needs at least one value"):
        llc.grid(model, data, step_size=[], **FIXED)
    with pytest.raises(ConfigError, match="The model expects inputs of width 3; x has width 2"):
        llc.grid(model, (data[0][:, :2], data[1]), step_size=[1e-3, 2e-3], **FIXED)
    assert runs == [] and not (tmp_path / "runs").exists()
