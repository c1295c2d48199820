"""The hand-written batched forward/backward pass agrees with plain autograd."""

import pytest
import torch

from llc.model.network import MLP


def _data(model: MLP, chains: int, shared_x: bool, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    params = model.init(chains, gen, dtype) + 0.1 * torch.randn(
        chains, model.n_params, generator=gen, dtype=dtype
    )
    shape = (20, model.widths[0]) if shared_x else (chains, 20, model.widths[0])
    x = torch.randn(*shape, generator=gen, dtype=dtype)
    y = torch.randn(*shape[:-1], model.widths[-1], generator=gen, dtype=dtype)
    return params, x, y


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "identity"])
@pytest.mark.parametrize("loss", ["mse", "t_regression"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shared_x", [True, False])
def test_hand_written_gradient_matches_autograd(activation, loss, bias, shared_x):
    model = MLP((3, 5, 4, 2), activation, bias, loss)
    params, x, y = _data(model, chains=3, shared_x=shared_x)
    value, grad = model.loss_and_grad(params.clone(), x, y)
    ref_value, ref_grad = model.autograd_loss_and_grad(params, x, y)
    torch.testing.assert_close(value, ref_value, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "identity"])
def test_fast_forward_matches_reference_forward(activation):
    model = MLP((4, 6, 1), activation)
    params, x, _ = _data(model, chains=2, shared_x=True)
    torch.testing.assert_close(model.forward(params, x), model.reference_forward(params, x))


def test_chains_are_independent():
    """A NaN in one chain must not leak into another: divergence handling relies on it."""
    model = MLP((3, 4, 1))
    params, x, y = _data(model, chains=3, shared_x=True)
    poisoned = params.clone()
    poisoned[1] = float("nan")
    value, grad = model.loss_and_grad(poisoned, x, y)
    ref_value, ref_grad = model.loss_and_grad(params.clone(), x, y)
    assert torch.isnan(value[1]) and torch.isnan(grad[1]).all()
    torch.testing.assert_close(value[[0, 2]], ref_value[[0, 2]])
    torch.testing.assert_close(grad[[0, 2]], ref_grad[[0, 2]])


def test_parameter_count_matches_layout():
    assert MLP((16, 64, 64, 1)).n_params == 5313  # the reference workload's student
    assert MLP((5, 3, 5), "identity", bias=False).n_params == 30


def test_bad_architecture_is_rejected():
    with pytest.raises(ValueError, match="activation"):
        MLP((2, 2), "sigmoid")
    with pytest.raises(ValueError, match="widths"):
        MLP((2,))
