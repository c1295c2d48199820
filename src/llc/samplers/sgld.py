"""SGLD (Welling & Teh 2011) with optional RMSprop / Adam preconditioning (Li et al. 2016).

w <- w - (eps/2)·G·∇U_B(w) + sqrt(eps·G)·N(0, I),   G = 1 / (lambda + sqrt(V))
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import PerChain, Recorder, rows_of
from llc.samplers.blocks import Block, BlockedChains, Share, compile_step, layout
from llc.samplers.registry import SAMPLERS, Sampling

RMSPROP_DECAY = 0.99
ADAM_BETA1 = 0.9
PRECOND_EPS = 1e-8


@dataclass
class SGLDState:
    w: torch.Tensor
    step_size: PerChain  # ε, set by step_size=auto in warm-up (per chain: a model's parts, run/parts.py)
    blocks: list[Block]  # the chains' random streams, in the blocks they are stepped in
    square_avg: torch.Tensor | None = None  # RMSprop / Adam: the running mean of squared gradients
    momentum: torch.Tensor | None = None  # Adam: the running mean of gradients
    t: int = 0  # steps taken (the preconditioner's bias correction)


class SGLD(BlockedChains):
    grad_evals_per_step = 1
    minibatch = True

    def __init__(
        self,
        posterior: LocalizedPosterior,
        step_size: float,
        precond: str = "none",
        compile: bool = False,
        share: Share | None = None,
    ) -> None:
        self.posterior = posterior
        self.initial_step = step_size
        self.precond = precond
        self.share = share
        # compile without preconditioning: gradient, localization and update of a block as one compiled
        # call (blocks.compile_step); the random numbers stay with the blocks' streams, drawn before it.
        # With preconditioning the driver compiles the gradient alone.
        self.fused = compile and SAMPLERS["sgld"].fuses({"precond": precond})
        self._compiled_step = compile_step(self._langevin, posterior.w_star.device) if self.fused else None

    @classmethod
    def from_sampling(cls, posterior: LocalizedPosterior, sampling: Sampling) -> SGLD:
        precond = sampling.option("precond")
        return cls(posterior, sampling.step_size, precond, bool(sampling.compile), sampling.share)

    def _langevin(
        self, w: torch.Tensor, idx: torch.Tensor | None, noise: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Loss on the minibatch at `idx` and the moved position, as blocks of columns
        (posterior.loss_and_grad_pieces)."""
        loss, pieces = self.posterior.loss_and_grad_pieces(w, self.posterior.batch_at(idx))
        step = math.sqrt(eps)
        return loss, [w[:, c] - (0.5 * eps) * g + step * noise[:, c] for c, g in pieces]

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGLDState:
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        blocks = layout(w.shape[0], gen, self.fused, self.share)
        if self.precond == "none":
            return SGLDState(w.clone(), self.initial_step, blocks)
        momentum = torch.zeros_like(w) if self.precond == "adam" else None
        return SGLDState(w.clone(), self.initial_step, blocks, torch.zeros_like(w), momentum)

    def langevin_proposal(self, state: SGLDState) -> tuple[PerChain, torch.Tensor | None]:
        """The full-batch Langevin proposal a step amounts to, for the MALA check: its step ε and the
        diagonal preconditioner G it applies (None without one)."""
        if state.square_avg is None:
            return state.step_size, None
        scale = state.square_avg / (1 - RMSPROP_DECAY ** max(state.t, 1))
        return state.step_size, 1.0 / (scale.sqrt() + PRECOND_EPS)

    def curvature_metric(self, state: SGLDState) -> torch.Tensor | None:
        """ε·h sets the step's bias and stability, h in the preconditioner's metric."""
        return self.langevin_proposal(state)[1]

    def set_step(self, state: SGLDState, step: PerChain) -> None:
        state.step_size = step

    def heating_per_noise(self, state: SGLDState) -> PerChain | None:
        """On a direction where the minibatch gradient has noise variance V, a step of ε adds (ε/2)²·V to
        the ε injected: a variance 1 + ε·V/4 too wide, so the LLC reads ε·tr(V)/8 high. With a
        preconditioner the noise is seen through G: no closed form here."""
        return state.step_size / 8 if self.precond == "none" else None

    def restart(self, state: SGLDState, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, their preconditioner statistics with them."""
        state.w[rows] = self.posterior.w_star
        for stat in (state.square_avg, state.momentum):
            if stat is not None:
                stat[rows] = 0.0

    def _compile_block(self, state: SGLDState, block: Block) -> None:
        assert self._compiled_step is not None
        w = state.w[block.chains]
        idx = self.posterior.placeholder_indices(block.size)
        self._compiled_step(w, idx, torch.zeros_like(w), state.step_size)

    def advance(self, state: SGLDState, count: int, tune: bool, recorder: Recorder) -> SGLDState:
        super().advance(state, count, tune, recorder)
        state.t += count
        return state

    def _step_block(self, state: SGLDState, block: Block, j: int) -> torch.Tensor:
        chains, eps = block.chains, rows_of(state.step_size, block.chains)
        w = state.w[chains]
        idx = self.posterior.indices(block)
        if self._compiled_step is not None:
            loss, moved = self._compiled_step(w, idx, block.normal(w), eps)
            torch.cat(moved, dim=1, out=w)
            return loss
        if self.precond == "none":
            loss = self.posterior.descend(w, self.posterior.batch_at(idx), 0.5 * eps, chains)
            noise = self.posterior.masked(block.normal(w), chains)
            if isinstance(eps, torch.Tensor):
                w.addcmul_(noise, eps.sqrt())
            else:
                w.add_(noise, alpha=math.sqrt(eps))
            return loss
        loss, grad = self.posterior.loss_and_grad(w, self.posterior.batch_at(idx), chains)
        noise = self.posterior.masked(block.normal(w), chains)
        assert state.square_avg is not None
        t = state.t + j + 1  # steps taken by the preconditioner, this one included
        square_avg = state.square_avg[chains]
        square_avg.mul_(RMSPROP_DECAY).addcmul_(grad, grad, value=1 - RMSPROP_DECAY)
        scale = square_avg / (1 - RMSPROP_DECAY**t)
        precond = 1.0 / (scale.sqrt_().add_(PRECOND_EPS))
        drift = grad
        if state.momentum is not None:
            momentum = state.momentum[chains]
            momentum.mul_(ADAM_BETA1).add_(grad, alpha=1 - ADAM_BETA1)
            drift = momentum / (1 - ADAM_BETA1**t)
        if isinstance(eps, torch.Tensor):
            w.addcmul_(precond * eps, drift, value=-0.5)
        else:
            w.addcmul_(precond, drift, value=-0.5 * eps)
        w.addcmul_(precond.mul_(eps).sqrt_(), noise)
        return loss
