"""The localized posterior's gradient, flat and as blocks of columns (what a compiled step updates)."""

from dataclasses import replace

import pytest
import torch

from llc.model.network import MLP
from llc.model.posterior import LocalizedPosterior


def _posterior(activation: str) -> LocalizedPosterior:
    gen = torch.Generator().manual_seed(0)
    model = MLP((3, 5, 4, 2), activation=activation)
    x, y = torch.randn(40, 3, generator=gen), torch.randn(40, 2, generator=gen)
    w_star = model.init(1, gen)[0]
    return LocalizedPosterior(model, x, y, w_star, nbeta=30.0, gamma=5.0, batch_size=8)


def _assembled(pieces, dim):
    flat = torch.full((pieces[0][1].shape[0], dim), float("nan"))
    covered = torch.zeros(dim, dtype=torch.int64)
    for cols, block in pieces:
        flat[:, cols] = block
        covered[cols] += 1
    return flat, covered


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gradient_blocks_tile_the_parameters_and_make_the_flat_gradient(activation):
    posterior = _posterior(activation)
    w = posterior.w_star + 0.1 * torch.randn(3, posterior.dim, generator=torch.Generator().manual_seed(1))
    batch = (posterior.x[:8], posterior.y[:8])
    loss, grad = posterior.loss_and_grad(w.clone(), batch)
    loss_p, pieces = posterior.loss_and_grad_pieces(w.clone(), batch)
    starts = [cols.start for cols, _ in pieces]
    assert starts == sorted(starts)  # column order, as the compiled step's torch.cat expects
    flat, covered = _assembled(pieces, posterior.dim)
    assert (covered == 1).all()  # every parameter exactly once
    torch.testing.assert_close(loss_p, loss)
    torch.testing.assert_close(flat, grad, rtol=1e-5, atol=1e-5)
    if activation == "tanh":
        assert len(pieces) == 6  # a weight block and a bias block per layer, never assembled


def test_a_custom_gradient_function_gives_one_block_from_it():
    posterior = _posterior("tanh")
    calls = []

    def grad_fn(w, x, y):
        calls.append(w.shape)
        return posterior.model.autograd_loss_and_grad(w, x, y)

    custom = replace(posterior, grad_fn=grad_fn)
    w = posterior.w_star.expand(2, -1).clone()
    batch = (posterior.x[:8], posterior.y[:8])
    _, pieces = custom.loss_and_grad_pieces(w, batch)
    assert calls and len(pieces) == 1 and pieces[0][0] == slice(0, posterior.dim)
    torch.testing.assert_close(pieces[0][1], custom.loss_and_grad(w, batch)[1])


def test_a_descent_step_moves_each_chain_by_the_potentials_gradient_and_returns_the_loss_before():
    posterior = _posterior("tanh")
    w = posterior.w_star + 0.1 * torch.randn(3, posterior.dim, generator=torch.Generator().manual_seed(1))
    batch = (posterior.x[:8], posterior.y[:8])
    loss, grad = posterior.loss_and_grad(w.clone(), batch)
    moved = w.clone()
    step = 1e-3
    torch.testing.assert_close(posterior.descend(moved, batch, step), loss)
    torch.testing.assert_close(moved, w - step * grad)
    assert not torch.equal(moved, w)
