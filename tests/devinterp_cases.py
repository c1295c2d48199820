"""devinterp's known-λ cases (its repository's tests/slt/): the models, their data, λ, devinterp's own
settings translated into this project's keys, and the finite-n expectation of the polynomial cases."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from test_own_model import NormalCrossing, normal_crossing_data

from llc.problems.truth import rrr_learning_coefficient


@dataclass(frozen=True)
class Case:
    name: str
    model: torch.nn.Module
    data: tuple[torch.Tensor, torch.Tensor]
    llc_true: float
    devinterp: dict[str, Any] = field(repr=False)  # its sampler settings as llc.estimate keys


def polynomial(powers: tuple[int, int]) -> Case:
    """sampler_accuracy_test.py: f = x·w1^p1·w2^p2 at w* = 0, n = 1000, SGLD lr 4e-4 without
    localization, 10 chains × 5000 full-batch draws; λ = 1 / (2 max p)."""
    settings = {"chains": 10, "steps": 5000, "step_size": 4e-4, "gamma": 0.0, "batch_size": 1000}
    return Case(
        f"poly{powers[0]}{powers[1]}",
        NormalCrossing(list(powers)),
        normal_crossing_data(),
        1 / (2 * max(powers)),
        settings,
    )


class ReducedRank(torch.nn.Module):
    """devinterp's ReducedRankRegressor: m -> h -> n, no biases."""

    def __init__(self, m: int, h: int, n: int) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(m, h, bias=False)
        self.fc2 = torch.nn.Linear(h, n, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1(x))


def reduced_rank(m: int, h: int, n: int) -> Case:
    """rrr_test.py: y independent of x (true rank 0), n = 1000, w* after 5000 full-batch Adam steps at
    lr 0.01; SGLD lr 6e-5 with localization 1, 3 chains × 2000 full-batch draws. A fresh model each call,
    its weights trained once per shape."""
    weights, x, y = _trained_reduced_rank(m, h, n)
    model = ReducedRank(m, h, n)
    model.load_state_dict(weights)
    settings = {"chains": 3, "steps": 2000, "step_size": 6e-5, "gamma": 1.0, "batch_size": 1000}
    return Case(f"rrr{m}{h}{n}", model, (x, y), rrr_learning_coefficient(m, h, n, 0), settings)


@functools.cache
def _trained_reduced_rank(
    m: int, h: int, n: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    torch.manual_seed(42)
    x, y = torch.randn(1000, m), torch.randn(1000, n)
    model = ReducedRank(m, h, n)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5000):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, x, y


POLYNOMIALS = ((1, 1), (1, 2), (2, 2))
REDUCED_RANKS = ((5, 3, 5), (5, 4, 5), (4, 3, 8), (8, 3, 4), (3, 8, 4))


def finite_n_llc(case: Case, gamma: float, nbeta: float | None = None, points: int = 2001) -> float:
    """nβ·(E_π[L] - L(w*)) of a two-parameter polynomial case by quadrature, with π the localized tempered
    posterior at w* = 0: the value the estimator converges to at this n (below λ: finite n, and γ)."""
    x, y = (t.double().numpy() for t in case.data)
    n = x.shape[0]
    nbeta = n / math.log(n) if nbeta is None else nbeta
    powers = case.model.powers.double().numpy()
    # w = s·sinh(u) on a uniform u: dense near the axes, where a normal crossing's mass gathers, and out
    # to 8 standard deviations of the localization.
    scale = 1e-3
    u = np.linspace(-1, 1, points) * math.asinh(8 / math.sqrt(gamma) / scale)
    grid, dw = scale * np.sinh(u), scale * np.cosh(u) * (u[1] - u[0])
    w1, w2 = np.meshgrid(grid, grid, indexing="ij")
    c = w1 ** powers[0] * w2 ** powers[1]
    # nβ·(L(c) - L(0)) for the mean squared error of c·x against y.
    excess = nbeta * (np.mean(x * x) * c * c - 2 * np.mean(x * y) * c)
    log_density = -excess - 0.5 * gamma * (w1 * w1 + w2 * w2)
    weights = np.exp(log_density - log_density.max()) * np.outer(dw, dw)
    return float((weights * excess).sum() / weights.sum())


# rrr_finite_n_llc(case, gamma=1.0) of each reduced-rank case, at the defaults' nβ = n/log n (64 chains ×
# 3,000 draws; Monte Carlo standard error 0.002-0.007): `python tests/devinterp_cases.py` prints them again.
RRR_FINITE_N = {"rrr535": 7.606, "rrr545": 8.936, "rrr438": 8.216, "rrr834": 8.057, "rrr384": 5.961}


def rrr_finite_n_llc(
    case: Case, gamma: float, nbeta: float | None = None, chains: int = 64, draws: int = 3000, seed: int = 0
) -> tuple[float, float]:
    """nβ·(E_π[L] - L(w*)) of a reduced-rank case, with π the localized tempered posterior at its w*, and
    its Monte Carlo standard error: the value the estimator converges to at this n, independent of this
    project's samplers.

    The model is y = B·A·x with the per-example squared error summed over outputs, so given A the loss is
    quadratic in B and B's rows are Gaussian under π: they are integrated in closed form (precision
    P = 2nβ·AΣAᵀ + γI, Σ = XᵀX/n) and only A (H×M, at most 24 numbers here) is sampled, by Metropolis-
    adjusted HMC in float64 on its exact marginal density (Rao-Blackwellized)."""
    gen = torch.Generator().manual_seed(seed)
    x, y = (t.double() for t in case.data)
    n = x.shape[0]
    nbeta = n / math.log(n) if nbeta is None else nbeta
    a_star = case.model.fc1.weight.detach().double()  # [H, M]
    b_star = case.model.fc2.weight.detach().double()  # [N, H]
    outputs, hidden = b_star.shape
    sigma, cross, y_square = x.T @ x / n, x.T @ y / n, (y * y).sum() / n  # [M, M], [M, N], scalar

    def loss(w: torch.Tensor) -> torch.Tensor:  # mean over examples of ‖w·x - y‖² for w [N, M]
        return (w @ sigma * w).sum() - 2 * (w * cross.T).sum() + y_square

    loss_star = loss(b_star @ a_star)
    eye = torch.eye(hidden, dtype=torch.float64)

    def conditional(a: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """B's rows given A [chains, H, M]: curvature M_A, linear terms, Cholesky factor of P, means."""
        curvature = a @ sigma @ a.transpose(-1, -2)  # [chains, H, H]
        linear = a @ cross  # [chains, H, N]
        factor = torch.linalg.cholesky(2 * nbeta * curvature + gamma * eye)
        pull = 2 * nbeta * linear + gamma * b_star.T
        return curvature, linear, factor, pull, torch.cholesky_solve(pull, factor)

    def log_density(a: torch.Tensor) -> torch.Tensor:  # log π(A) up to a constant, B integrated out
        _, _, factor, pull, mean = conditional(a)
        log_det = 2 * torch.log(torch.diagonal(factor, dim1=-2, dim2=-1)).sum(-1)
        return (
            -0.5 * gamma * ((a - a_star) ** 2).sum((-1, -2))
            + 0.5 * (pull * mean).sum((-1, -2))
            - 0.5 * outputs * log_det
        )

    def excess(a: torch.Tensor) -> torch.Tensor:  # nβ·(E[L | A] - L(w*)) [chains]
        curvature, linear, factor, _, mean = conditional(a)
        trace = (curvature * torch.cholesky_inverse(factor)).sum((-1, -2))
        quadratic = (mean * (curvature @ mean)).sum((-1, -2)) + outputs * trace
        return nbeta * (quadratic - 2 * (mean * linear).sum((-1, -2)) + y_square - loss_star)

    def value_and_grad(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = a.detach().requires_grad_(True)
        value = log_density(a)
        return value.detach(), torch.autograd.grad(value.sum(), a)[0]

    shape = (chains, *a_star.shape)
    a = a_star.expand(shape) + 0.01 * torch.randn(shape, generator=gen, dtype=torch.float64)
    step, leapfrogs, warmup = torch.full((chains, 1, 1), 0.01, dtype=torch.float64), 10, draws // 3
    value, grad = value_and_grad(a)
    sums = torch.zeros(chains, dtype=torch.float64)
    for t in range(warmup + draws):
        p = torch.randn(shape, generator=gen, dtype=torch.float64)
        h0 = -value + 0.5 * (p * p).sum((-1, -2))
        a_new, p_new = a, p + 0.5 * step * grad
        for k in range(leapfrogs):
            a_new = a_new + step * p_new
            value_new, grad_new = value_and_grad(a_new)
            p_new = p_new + (step if k < leapfrogs - 1 else 0.5 * step) * grad_new
        h1 = -value_new + 0.5 * (p_new * p_new).sum((-1, -2))
        accept = torch.exp((h0 - h1).clamp(max=0)).nan_to_num(0.0)
        take = torch.rand(chains, generator=gen, dtype=torch.float64) < accept
        a = torch.where(take[:, None, None], a_new, a)
        value, grad = torch.where(take, value_new, value), torch.where(take[:, None, None], grad_new, grad)
        if t < warmup:  # towards 80% acceptance
            step = step * torch.exp(0.05 * (accept - 0.8))[:, None, None]
        else:
            sums += excess(a)
    chain_means = sums / draws
    return float(chain_means.mean()), float(chain_means.std() / math.sqrt(chains))


if __name__ == "__main__":
    for shape in REDUCED_RANKS:
        rrr = reduced_rank(*shape)
        mean, se = rrr_finite_n_llc(rrr, gamma=1.0)
        print(f"{rrr.name}: λ = {rrr.llc_true}, finite-n at γ = 1: {mean:.3f} ± {se:.3f}")
