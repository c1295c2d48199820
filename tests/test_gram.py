"""The second-moment loss of linear networks equals the direct full-data loss and gradient."""

import pytest
import torch

from llc.model.gram import GramLoss, supports
from llc.model.network import MLP


@pytest.mark.parametrize("widths", [(4, 3), (5, 3, 5), (4, 3, 3, 4), (2, 6, 1, 3)])
def test_gram_loss_and_gradient_equal_the_direct_computation(widths):
    gen = torch.Generator().manual_seed(1)
    model = MLP(widths, "identity", bias=False)
    x = torch.randn(500, widths[0], generator=gen, dtype=torch.float64)
    y = torch.randn(500, widths[-1], generator=gen, dtype=torch.float64)
    params = torch.randn(3, model.n_params, generator=gen, dtype=torch.float64)
    loss, grad = GramLoss(model, x, y)(params, x, y)
    ref_loss, ref_grad = model.loss_and_grad(params, x, y)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-10)


def test_float32_parameters_keep_full_precision_near_the_minimum():
    """The loss is a difference of O(1) terms; float64 sums keep L - L0 exact to ~1e-7 relative."""
    gen = torch.Generator().manual_seed(2)
    model = MLP((5, 3, 5), "identity", bias=False)
    x = torch.randn(2000, 5, generator=gen)
    params = torch.randn(2, model.n_params, generator=gen)
    y = model.forward(params[:1], x)[0] + 0.01 * torch.randn(2000, 5, generator=gen)
    loss, _ = GramLoss(model, x, y)(params[:1], x, y)
    direct = model.batch_loss(params[:1].double(), x.double(), y.double())
    assert abs(loss.double().item() - direct.item()) < 1e-7


def test_only_linear_mse_networks_qualify():
    assert supports(MLP((3, 2), "identity", bias=False))
    assert not supports(MLP((3, 2), "tanh", bias=False))
    assert not supports(MLP((3, 2), "identity", bias=True))
    with pytest.raises(ValueError, match="bias-free linear network"):
        GramLoss(
            MLP((3, 2), "identity", bias=False, loss="t_regression"), torch.zeros(2, 3), torch.zeros(2, 2)
        )


def test_a_full_batch_run_on_second_moments_is_sized_by_its_products_not_by_n():
    """HMC and MCLMC on a linear network never touch the n points (gram.py), so their step's work, which
    sets the thread count, is that of the weight products: one thread for a 947-parameter network
    however many points (torch's whole pool kept such a run going 10 times as long on a loaded machine)."""
    from dataclasses import replace

    from llc.config import build_config
    from llc.model.posterior import LocalizedPosterior
    from llc.samplers.driver import step_work
    from llc.threads import threads_for

    widths = (18, 13, 11, 14, 13, 18)
    config = build_config("full", {"problem": "dln", "widths": widths, "true_rank": 2, "sampler": "hmc"})
    model = MLP(widths, "identity", bias=False)
    x, y = torch.randn(50_000, 18), torch.randn(50_000, 18)
    direct = LocalizedPosterior(model, x, y, torch.zeros(model.n_params), 100.0, 1.0)
    gram = replace(direct, grad_fn=GramLoss(model, x, y))
    assert step_work(config.sampling, direct) == 8 * 50_000 * model.n_params
    assert step_work(config.sampling, gram) == 8 * model.n_params * 18
    assert (
        threads_for(0, step_work(config.sampling, gram)) == 1
        and threads_for(0, step_work(config.sampling, direct)) == 0
    )
