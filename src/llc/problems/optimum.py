"""The best loss a linear network can reach: reduced-rank regression, in closed form.

A linear network without biases computes x·W with W = W_1···W_L of rank at most k = min(widths).
Under the mean squared error summed over outputs, the best such W is the least-squares solution
projected on the top k right singular vectors of its fitted values (Izenman 1975):

    W_ols = argmin ||Y − X W||²,   X W_ols = U S Vᵀ,   W_k = W_ols V_k V_kᵀ
"""

from __future__ import annotations

import torch

from llc.model.network import MLP
from llc.threads import cpu_threads


def is_linear_network(model: object) -> bool:
    """Whether the model is a linear network with the squared loss (the closed form applies); a
    `problem: module` model never is."""
    if not isinstance(model, MLP):
        return False
    return model.activation == "identity" and not model.bias and model.loss == "mse"


def best_linear_loss(model: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    """The least mean loss any parameters of the linear network `model` reach on (x, y)."""
    if not is_linear_network(model):
        raise ValueError("best_linear_loss applies to linear networks without biases and the mse loss")
    rank = min(model.widths)
    with cpu_threads(1):  # float64 on one thread: the same number on every machine
        xd, yd = x.double().cpu(), y.double().cpu()
        w_ols = torch.linalg.lstsq(xd, yd).solution
        _, _, vh = torch.linalg.svd(xd @ w_ols, full_matrices=False)
        v_k = vh[:rank].T
        w_k = w_ols @ v_k @ v_k.T
        return float((yd - xd @ w_k).square().sum(dim=1).mean())
