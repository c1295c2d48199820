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
from llc.samplers.blocks import Block, cpu_parts, make_blocks, run_parts, split


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
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        self.blocks = make_blocks(w.shape[0], gen)
        self.parts = cpu_parts(w.device, self.blocks)
        return SGHMCState(w.clone(), torch.zeros_like(w))

    def position(self, state: SGHMCState) -> torch.Tensor:
        return state.w

    def step(self, state: SGHMCState, gen: torch.Generator, tune: bool) -> tuple[SGHMCState, StepInfo]:
        losses = run_parts(lambda group: self._advance_share(state, group), split(self.blocks, self.parts))
        return state, StepInfo(losses[0] if len(losses) == 1 else torch.cat(losses))

    def _advance_share(self, state: SGHMCState, group: list[Block]) -> torch.Tensor:
        losses = [self._advance(state, block) for block in group]
        return losses[0] if len(losses) == 1 else torch.cat(losses)

    def _advance(self, state: SGHMCState, block: Block) -> torch.Tensor:
        w, v = state.w[block.chains], state.v[block.chains]
        loss, grad = self.posterior.loss_and_grad(w, self.posterior.minibatch(block.size, block.gen))
        noise = block.normal(w)
        kick = math.sqrt(2 * self.alpha * self.eta)
        v.mul_(1 - self.alpha).add_(grad, alpha=-self.eta).add_(noise, alpha=kick)
        w.add_(v)
        return loss
