"""SGLD (Welling & Teh 2011) with optional RMSprop / Adam preconditioning (Li et al. 2016).

w <- w - (eps/2)·G·∇U_B(w) + sqrt(eps·G)·N(0, I),   G = 1 / (lambda + sqrt(V))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.config import RunConfig
from llc.posterior import LocalizedPosterior
from llc.samplers.base import StepInfo
from llc.samplers.blocks import Block, cpu_parts, make_blocks, run_parts, split

RMSPROP_DECAY = 0.99
ADAM_BETA1 = 0.9
PRECOND_EPS = 1e-8


@dataclass
class SGLDState:
    w: torch.Tensor
    square_avg: torch.Tensor | None = None
    momentum: torch.Tensor | None = None
    t: int = 0


class SGLD:
    grad_evals_per_step = 1
    minibatch = True
    transient = ("steps_taken", "_langevin_compiled")  # not checkpointed: a resumed run compiles afresh

    def __init__(self, posterior: LocalizedPosterior, config: RunConfig) -> None:
        self.posterior = posterior  # with compile=true the driver compiles its gradient
        self.eps = config.resolved_step_size
        self.precond = config.precond
        self.compiled = config.compile
        self.steps_taken = 0
        # compile=true: gradient, localization and update of a block as one compiled function; the
        # random numbers stay with the blocks' streams, drawn before it.
        fuse = config.compile and self.precond == "none"
        self._langevin_compiled = torch.compile(self._langevin, dynamic=False) if fuse else None

    def _langevin(
        self, w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = self.posterior.loss_and_grad(w, (x, y))
        return loss, w - (0.5 * self.eps) * grad + math.sqrt(self.eps) * noise

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGLDState:
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        self.blocks = make_blocks(w.shape[0], gen)
        self.parts = cpu_parts(w.device, self.blocks)
        if self.precond == "none":
            return SGLDState(w.clone())
        momentum = torch.zeros_like(w) if self.precond == "adam" else None
        return SGLDState(w.clone(), torch.zeros_like(w), momentum)

    def position(self, state: SGLDState) -> torch.Tensor:
        return state.w

    def step(self, state: SGLDState, gen: torch.Generator, tune: bool) -> tuple[SGLDState, StepInfo]:
        state.t += 1
        # A compiled gradient compiles on its first calls (one per block shape): not from two threads.
        parts = 1 if self.compiled and self.steps_taken < 2 else self.parts
        self.steps_taken += 1
        losses = run_parts(lambda group: self._advance_share(state, group), split(self.blocks, parts))
        return state, StepInfo(losses[0] if len(losses) == 1 else torch.cat(losses))

    def _advance_share(self, state: SGLDState, group: list[Block]) -> torch.Tensor:
        losses = [self._advance(state, block) for block in group]
        return losses[0] if len(losses) == 1 else torch.cat(losses)

    def _advance(self, state: SGLDState, block: Block) -> torch.Tensor:
        """One step of the block's chains, in place; returns their losses."""
        chains = block.chains
        w = state.w[chains]
        batch = self.posterior.minibatch(block.size, block.gen)
        if self._langevin_compiled is not None:
            loss, moved = self._langevin_compiled(w, *batch, block.normal(w))
            w.copy_(moved)
            return loss
        loss, grad = self.posterior.loss_and_grad(w, batch)
        noise = block.normal(w)
        if self.precond == "none":
            w.add_(grad, alpha=-0.5 * self.eps).add_(noise, alpha=math.sqrt(self.eps))
            return loss
        assert state.square_avg is not None
        square_avg = state.square_avg[chains]
        square_avg.mul_(RMSPROP_DECAY).addcmul_(grad, grad, value=1 - RMSPROP_DECAY)
        scale = square_avg / (1 - RMSPROP_DECAY**state.t)
        precond = 1.0 / (scale.sqrt_().add_(PRECOND_EPS))
        drift = grad
        if state.momentum is not None:
            momentum = state.momentum[chains]
            momentum.mul_(ADAM_BETA1).add_(grad, alpha=1 - ADAM_BETA1)
            drift = momentum / (1 - ADAM_BETA1**state.t)
        w.addcmul_(precond, drift, value=-0.5 * self.eps).addcmul_(precond.mul_(self.eps).sqrt_(), noise)
        return loss
