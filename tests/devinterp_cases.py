"""devinterp's known-λ cases (its repository's tests/slt/): the models, their data, λ, devinterp's own
settings translated into this project's keys, and the finite-n expectation of the polynomial cases."""

from __future__ import annotations

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
    lr 0.01; SGLD lr 6e-5 with localization 1, 3 chains × 2000 full-batch draws."""
    torch.manual_seed(42)
    x, y = torch.randn(1000, m), torch.randn(1000, n)
    model = ReducedRank(m, h, n)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(5000):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    settings = {"chains": 3, "steps": 2000, "step_size": 6e-5, "gamma": 1.0, "batch_size": 1000}
    return Case(f"rrr{m}{h}{n}", model, (x, y), rrr_learning_coefficient(m, h, n, 0), settings)


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
