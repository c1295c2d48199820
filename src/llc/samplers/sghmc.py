"""SGHMC (Chen, Fox & Guestrin 2014), in its practical form with friction alpha and learning rate eta:

v <- (1 - alpha)·v - eta·∇U_B(w) + sqrt(2·alpha·eta)·N(0, I),   w <- w + v
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.config import RunConfig
from llc.posterior import LocalizedPosterior
from llc.samplers.base import StepInfo


@dataclass
class SGHMCState:
    w: torch.Tensor
    v: torch.Tensor


class SGHMC:
    grad_evals_per_step = 1
    minibatch = True

    def __init__(self, posterior: LocalizedPosterior, config: RunConfig) -> None:
        self.posterior = posterior
        self.eta = config.resolved_step_size
        self.alpha = config.friction

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGHMCState:
        return SGHMCState(w.clone(), torch.zeros_like(w))

    def position(self, state: SGHMCState) -> torch.Tensor:
        return state.w

    def step(self, state: SGHMCState, gen: torch.Generator, tune: bool) -> tuple[SGHMCState, StepInfo]:
        loss, grad = self.posterior.loss_and_grad(state.w, self.posterior.minibatch(state.w.shape[0], gen))
        noise = torch.randn(state.w.shape, generator=gen, device=state.w.device, dtype=state.w.dtype)
        state.v.mul_(1 - self.alpha).add_(grad, alpha=-self.eta).add_(
            noise, alpha=math.sqrt(2 * self.alpha * self.eta)
        )
        state.w.add_(state.v)
        return state, StepInfo(loss)
