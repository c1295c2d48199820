"""devices=[...]: one run's chains split across devices (here CPU processes) draw exactly what one
device draws, merge into one run, and every mistake is one ConfigError before anything is written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import llc
from llc.config import IN_MEMORY_MODULE, RunConfig
from llc.errors import ConfigError
from llc.model.posterior import LocalizedPosterior
from llc.problems.build import STREAM_SAMPLING, stream
from llc.problems.module import module_problem
from llc.run.devices import sample_on_devices, split
from llc.samplers.driver import sample


def problem() -> tuple[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    x = torch.randn(128, 4)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))
    return module, (x, torch.sin(x[:, :2]))


def test_sgld_chains_split_over_two_processes_draw_what_one_process_draws_in_one_run(tmp_path):
    module, data = problem()
    run = {"chains": 8, "steps": 30, "warmup": 0, "step_size": 1e-3, "gamma": 100.0, "batch_size": 16}
    one = llc.estimate(module, data, **run)
    two = llc.estimate(module, data, devices=["cpu", "cpu"], runs_dir=tmp_path, **run)

    draws = two.idata.posterior["llc"].values
    assert draws.shape == (8, 30)
    np.testing.assert_array_equal(draws, one.idata.posterior["llc"].values)
    np.testing.assert_array_equal(two.idata.posterior["loss"].values, one.idata.posterior["loss"].values)
    assert two.run_dir is not None and len(list(two.run_dir.glob("*.nc"))) == 1
    metrics = json.loads((two.run_dir / "metrics.json").read_text())
    assert metrics["devices"] == ["cpu", "cpu"] and metrics["run_id"] == one.metrics["run_id"]


def test_hmc_chains_split_over_two_processes_draw_what_one_process_draws():
    """A full-batch sampler: its momenta and acceptance draws come from the same streams."""
    module, data = problem()
    values = {"problem": "module", "sampler": "hmc", "chains": 8, "steps": 8, "warmup": 4, "n_leapfrog": 3}
    config = RunConfig.model_validate(values, context={IN_MEMORY_MODULE: True})
    model, x, y, _ = module_problem(config, module, data)
    w_star = model.flat_parameters()
    loss0 = float(model.batch_loss(w_star.unsqueeze(0), x, y)[0])
    posterior = LocalizedPosterior(model, x, y, w_star, config.nbeta_for(x.shape[0]), 100.0)
    seed = stream(config.seed, STREAM_SAMPLING).initial_seed()

    one = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(seed))
    two = sample_on_devices(config.sampling, posterior, loss0, seed, ("cpu", "cpu"))
    assert two.llc.shape == (8, 8)
    np.testing.assert_array_equal(two.llc, one.llc)
    np.testing.assert_array_equal(two.stats["acceptance_rate"], one.stats["acceptance_rate"])


def test_chains_split_on_whole_streams_the_larger_shares_first():
    assert split(20, 2) == [(0, 12), (12, 8)]
    assert split(8, 2) == [(0, 4), (4, 4)]


MISTAKES = [
    ({"devices": ["cpu", "tpu"]}, r"devices: each device is cpu, cuda or cuda:N, got 'tpu'"),
    ({"devices": ["cpu", "cpu"], "chains": 6}, r"whole random streams of 4: .* \(try chains=8\)"),
    ({"devices": ["cpu", "cpu"], "step_size": "auto", "warmup": 40}, r"step_size=auto .* give a step_size"),
]
if not torch.cuda.is_available():
    MISTAKES.append(
        ({"devices": ["cuda:0", "cuda:1"]}, r"devices: cuda:0 needs CUDA, which this machine lacks")
    )


@pytest.mark.parametrize(("values", "message"), MISTAKES)
def test_a_devices_mistake_is_one_config_error_before_anything_is_written(values, message, tmp_path):
    module, data = problem()
    with pytest.raises(ConfigError, match=message) as caught:
        llc.estimate(module, data, runs_dir=tmp_path, **{"chains": 8, "step_size": 1e-3, **values})
    assert len(str(caught.value).splitlines()) <= 2  # the project's header line, then the one problem
    assert not any(tmp_path.iterdir())


def test_streamed_data_on_several_devices_is_one_config_error_before_anything_is_written(tmp_path):
    module, (x, y) = problem()

    class Pairs(torch.utils.data.Dataset):  # not a TensorDataset: read an item at a time
        def __len__(self) -> int:
            return len(x)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            return x[i], y[i]

    loader = torch.utils.data.DataLoader(Pairs(), batch_size=16)
    with pytest.raises(ConfigError, match=r"devices: streamed data .* pass the data as tensors"):
        llc.estimate(module, loader, runs_dir=tmp_path, chains=8, step_size=1e-3, devices=["cpu", "cpu"])
    assert not any(tmp_path.iterdir())
