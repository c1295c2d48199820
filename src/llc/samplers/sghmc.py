"""SGHMC (Chen, Fox & Guestrin 2014), in its practical form with friction alpha and learning rate eta:

v <- (1 - alpha)·v - eta·∇U_B(w) + sqrt(2·alpha·eta)·N(0, I),   w <- w + v
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from llc.config import RunConfig
from llc.posterior import LocalizedPosterior
from llc.samplers.blocks import Block, BlockedChains, compile_step


@dataclass
class SGHMCState:
    w: torch.Tensor
    v: torch.Tensor


class SGHMC(BlockedChains):
    grad_evals_per_step = 1
    minibatch = True
    transient = ("parts", "_compiled_step")  # not checkpointed: a resumed run re-plans

    def __init__(self, posterior: LocalizedPosterior, config: RunConfig) -> None:
        self.posterior = posterior
        self.eta = config.resolved_step_size
        self.alpha = config.friction
        # compile=true: gradient, localization and update of a block as one compiled call (as in SGLD).
        self.fused = bool(config.compile)
        self._compiled_step: Callable | None = None

    def _kick(
        self, w: torch.Tensor, v: torch.Tensor, idx: torch.Tensor | None, noise: torch.Tensor
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Loss, the new position and the new velocity, as blocks of columns (as SGLD's `_langevin`)."""
        loss, pieces = self.posterior.loss_and_grad_pieces(w, self.posterior.batch_at(idx))
        kick = math.sqrt(2 * self.alpha * self.eta)
        velocity = [(1 - self.alpha) * v[:, c] - self.eta * g + kick * noise[:, c] for c, g in pieces]
        return loss, [w[:, c] + u for (c, _), u in zip(pieces, velocity, strict=True)], velocity

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGHMCState:
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        self.plan(w, gen)
        if self.fused:
            self._compiled_step = compile_step(self._kick, w.device)
        return SGHMCState(w.clone(), torch.zeros_like(w))

    def position(self, state: SGHMCState) -> torch.Tensor:
        return state.w

    @property
    def step_size(self) -> float:
        return self.eta

    @step_size.setter
    def step_size(self, value: float) -> None:
        self.eta = value

    def langevin_proposal(self, state: SGHMCState) -> tuple[float, None]:
        """The Langevin proposal a step amounts to, for the MALA check: over the 1/α steps that friction
        takes to forget a velocity, SGHMC moves as SGLD with ε = 2η/α, and its minibatch noise heats the
        chains exactly as SGLD's at that ε does (its discretization error is that of ε = η, smaller)."""
        return 2 * self.eta / self.alpha, None

    def restart(self, state: SGHMCState, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, at rest."""
        state.w[rows] = self.posterior.w_star
        state.v[rows] = 0.0

    def _compile_block(self, state: SGHMCState, block: Block) -> None:
        assert self._compiled_step is not None
        w, v = state.w[block.chains], state.v[block.chains]
        self._compiled_step(w, v, self.posterior.placeholder_indices(block.size), torch.zeros_like(w))

    def _step_block(self, state: SGHMCState, block: Block, j: int) -> torch.Tensor:
        w, v = state.w[block.chains], state.v[block.chains]
        idx = self.posterior.indices(block)
        if self._compiled_step is not None:
            loss, w_new, v_new = self._compiled_step(w, v, idx, block.normal(w))
            torch.cat(w_new, dim=1, out=w)
            torch.cat(v_new, dim=1, out=v)
            return loss
        loss, grad = self.posterior.loss_and_grad(w, self.posterior.batch_at(idx))
        noise = block.normal(w)
        kick = math.sqrt(2 * self.alpha * self.eta)
        v.mul_(1 - self.alpha).add_(grad, alpha=-self.eta).add_(noise, alpha=kick)
        w.add_(v)
        return loss
