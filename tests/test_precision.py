"""dtype=bfloat16 | float16: the model computes in half precision under autocast, every path of the
engine (hand-written backward, exported graph, functional_call), while the chain state, the data, the
loss and the gradient stay float32; the estimate agrees with float32's."""

from __future__ import annotations

import pytest
import torch

import llc
from llc.config import IN_MEMORY_MODULE, RunConfig, build_config
from llc.errors import ConfigError
from llc.modules.model import ModuleModel, per_example_mse
from llc.problems.module import module_problem


class Custom(torch.nn.Module):
    """Not a stack of common layers: runs as an exported graph (or through functional_call)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(4, 16), torch.nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)) * 1.5)


def stack() -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 2))


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=gen)
    return x, torch.sin(x[:, :2] * 2)


def trained(module: torch.nn.Module) -> torch.nn.Module:
    x, y = data()
    opt = torch.optim.Adam(module.parameters(), lr=0.02)
    for _ in range(300):
        opt.zero_grad()
        per_example_mse(module(x), y).mean().backward()
        opt.step()
    return module


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize(
    ("build", "exported"), [(stack, True), (Custom, True), (Custom, False)], ids=["by_hand", "graph", "vmap"]
)
def test_half_precision_runs_the_model_in_it_and_returns_a_float32_loss_and_gradient(build, exported, dtype):
    torch.manual_seed(0)
    module = build()
    x, y = data()
    full = ModuleModel(module, per_example_mse, 1, exported=exported)
    half = ModuleModel(module, per_example_mse, 1, exported=exported, compute=dtype)
    assert (full.by_hand is not None) == (build is stack)
    w = full.flat_parameters().expand(3, -1) + 0.01 * torch.randn(3, full.n_params)
    (loss, grad), (loss_half, grad_half) = full.loss_and_grad(w, x, y), half.loss_and_grad(w, x, y)

    assert loss_half.dtype == grad_half.dtype == torch.float32
    assert not torch.equal(loss_half, loss)  # rounded: the model did run in half precision
    torch.testing.assert_close(loss_half, loss, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(grad_half, grad, rtol=0.1, atol=0.02 * float(grad.abs().max()))
    batch_loss = half.batch_loss(w, x, y)
    assert batch_loss.dtype == torch.float32
    torch.testing.assert_close(batch_loss, loss_half)


def test_a_bfloat16_problem_keeps_its_data_weights_and_chain_state_in_float32():
    config = RunConfig.model_validate(
        {"problem": "module", "dtype": "bfloat16"}, context={IN_MEMORY_MODULE: True}
    )
    model, x, y, _ = module_problem(config, stack(), data())
    assert model.compute is torch.bfloat16
    assert x.dtype == y.dtype == model.flat_parameters().dtype == torch.float32


def test_a_bfloat16_estimate_agrees_with_float32s():
    """The same seed, so the same minibatches and noise: the difference is the rounding alone."""
    module, x, y = trained(stack()), *data()
    run = {"chains": 4, "steps": 100, "warmup": 0, "step_size": 1e-3, "gamma": 100.0, "batch_size": 32}
    full = llc.estimate(module, (x, y), **run)
    half = llc.estimate(module, (x, y), dtype="bfloat16", **run)
    assert full.llc_mean > 1.0
    assert abs(half.llc_mean - full.llc_mean) <= max(0.05 * full.llc_mean, 3 * full.llc_se)
    assert half.metrics["L0"] != full.metrics["L0"]  # L0 computed in bfloat16 too, as the draws are


def test_half_precision_is_for_your_own_model():
    with pytest.raises(
        ConfigError, match=r"dtype=bfloat16 is for your own model .* takes float32 or float64"
    ):
        build_config(None, {"dtype": "bfloat16", "widths": (4,)})
