"""Empirical risk minimization: train the student to the point w* whose LLC is estimated."""

from __future__ import annotations

import torch

from llc.problems import Problem
from llc.problems.build import STREAM_INIT, stream
from llc.threads import cpu_threads


def train(problem: Problem, steps: int, lr: float, seed: int) -> tuple[torch.Tensor, float]:
    """Full-batch Adam with cosine decay from a seeded init; returns w* [d] and L0 = L_n(w*)."""
    w = problem.model.init(1, stream(seed, STREAM_INIT), problem.x.dtype).requires_grad_(False)
    w = torch.nn.Parameter(w)
    opt = torch.optim.Adam([w], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    for _ in range(steps):
        _, grad = problem.model.loss_and_grad(w.detach(), problem.x, problem.y)
        w.grad = grad
        opt.step()
        schedule.step()
    w_star = w.detach()
    model = problem.model
    if len(model.widths) == 2 and model.activation == "identity" and model.loss == "mse" and not model.bias:
        # A one-layer linear model (the `linear` problem): least squares gives the exact minimum, which
        # a few hundred Adam steps may not reach; a w* short of the minimum biases the LLC downwards.
        # In float64 on one thread, so every machine and thread count gets the same w*.
        with cpu_threads(1):
            exact = torch.linalg.lstsq(problem.x.double(), problem.y.double()).solution
        w_star = exact.reshape(1, -1).to(w_star.dtype)
    loss = model.batch_loss(w_star, problem.x, problem.y)
    return w_star[0].clone(), float(loss[0])
