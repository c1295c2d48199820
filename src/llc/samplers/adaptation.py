"""Step-size adaptation by dual averaging (Hoffman & Gelman 2014), one step size per chain."""

from __future__ import annotations

import math

import torch


class DualAveraging:
    """Drives each chain's acceptance rate to `target` by adapting log step size."""

    def __init__(
        self,
        step_size: torch.Tensor,
        target: float,
        t0: float = 10.0,
        gamma: float = 0.05,
        kappa: float = 0.75,
    ):
        self.mu = torch.log(10 * step_size)
        self.target, self.t0, self.gamma, self.kappa = target, t0, gamma, kappa
        self.error_sum = torch.zeros_like(step_size)
        self.log_avg = torch.log(step_size)
        self.t = 0

    def update(self, accept_prob: torch.Tensor) -> torch.Tensor:
        """Feed one step's acceptance probabilities; returns the next step sizes."""
        self.t += 1
        eta = 1.0 / (self.t + self.t0)
        self.error_sum = (1 - eta) * self.error_sum + eta * (self.target - accept_prob)
        log_step = self.mu - math.sqrt(self.t) / self.gamma * self.error_sum
        weight = self.t ** (-self.kappa)
        self.log_avg = weight * log_step + (1 - weight) * self.log_avg
        return torch.exp(log_step)

    @property
    def final(self) -> torch.Tensor:
        """The averaged step size to sample with after warm-up."""
        return torch.exp(self.log_avg)
