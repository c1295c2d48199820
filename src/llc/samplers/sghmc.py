"""SGHMC (Chen, Fox & Guestrin 2014), in its practical form with friction alpha and learning rate eta:

v <- (1 - alpha)·v - eta·∇U_B(w) + sqrt(2·alpha·eta)·N(0, I),   w <- w + v
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.posterior import LocalizedPosterior
from llc.samplers.blocks import Block, BlockedChains, compile_step, layout


@dataclass
class SGHMCState:
    w: torch.Tensor
    v: torch.Tensor
    step_size: float  # η, set by step_size=auto in warm-up
    blocks: list[Block]  # the chains' random streams, in the blocks they are stepped in


class SGHMC(BlockedChains):
    grad_evals_per_step = 1
    minibatch = True

    def __init__(
        self, posterior: LocalizedPosterior, step_size: float, friction: float, compile: bool = False
    ) -> None:
        self.posterior = posterior
        self.initial_step = step_size
        self.alpha = friction
        # compile: gradient, localization and update of a block as one compiled call (as in SGLD).
        self.fused = compile
        self._compiled_step = compile_step(self._kick, posterior.w_star.device) if compile else None

    def _kick(
        self, w: torch.Tensor, v: torch.Tensor, idx: torch.Tensor | None, noise: torch.Tensor, eta: float
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Loss, the new position and the new velocity, as blocks of columns (as SGLD's `_langevin`)."""
        loss, pieces = self.posterior.loss_and_grad_pieces(w, self.posterior.batch_at(idx))
        kick = math.sqrt(2 * self.alpha * eta)
        velocity = [(1 - self.alpha) * v[:, c] - eta * g + kick * noise[:, c] for c, g in pieces]
        return loss, [w[:, c] + u for (c, _), u in zip(pieces, velocity, strict=True)], velocity

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGHMCState:
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        blocks = layout(w.shape[0], gen, self.fused)
        return SGHMCState(w.clone(), torch.zeros_like(w), self.initial_step, blocks)

    def langevin_proposal(self, state: SGHMCState) -> tuple[float, None]:
        """The Langevin proposal a step amounts to, for the MALA check: over the 1/α steps that friction
        takes to forget a velocity, SGHMC moves as SGLD with ε = 2η/α, and its minibatch noise heats the
        chains exactly as SGLD's at that ε does (its discretization error is that of ε = η, smaller)."""
        return 2 * state.step_size / self.alpha, None

    def restart(self, state: SGHMCState, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, at rest."""
        state.w[rows] = self.posterior.w_star
        state.v[rows] = 0.0

    def _compile_block(self, state: SGHMCState, block: Block) -> None:
        assert self._compiled_step is not None
        w, v = state.w[block.chains], state.v[block.chains]
        idx = self.posterior.placeholder_indices(block.size)
        self._compiled_step(w, v, idx, torch.zeros_like(w), state.step_size)

    def _step_block(self, state: SGHMCState, block: Block, j: int) -> torch.Tensor:
        w, v, eta = state.w[block.chains], state.v[block.chains], state.step_size
        idx = self.posterior.indices(block)
        if self._compiled_step is not None:
            loss, w_new, v_new = self._compiled_step(w, v, idx, block.normal(w), eta)
            torch.cat(w_new, dim=1, out=w)
            torch.cat(v_new, dim=1, out=v)
            return loss
        loss, grad = self.posterior.loss_and_grad(w, self.posterior.batch_at(idx))
        noise = block.normal(w)
        kick = math.sqrt(2 * self.alpha * eta)
        v.mul_(1 - self.alpha).add_(grad, alpha=-eta).add_(noise, alpha=kick)
        w.add_(v)
        return loss
