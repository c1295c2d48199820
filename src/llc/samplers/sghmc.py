"""SGHMC (Chen, Fox & Guestrin 2014), in its practical form with friction alpha and learning rate eta:

v <- (1 - alpha)·v - eta·∇U_B(w) + sqrt(2·alpha·eta)·N(0, I),   w <- w + v

This is underdamped Langevin dynamics with time step sqrt(eta) and momentum v / sqrt(eta). Its step's
bias and stability are set by eta·h on a direction of curvature h (as SGLD's by ε·h: the sampled
variance is about 1/(1 − eta·h/4) times too large), whatever the friction; the friction sets how fast
the chains forget their velocity. Low friction moves chains ballistically along soft directions, which
SGLD (the overdamped limit) crosses only by diffusion, but lets the minibatch's gradient noise heat
them: it adds eta²·V to the velocity's variance against the 2·alpha·eta injected (step_search.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import PerChain, rows_of
from llc.samplers.blocks import Block, BlockedChains, Share, compile_step, layout
from llc.samplers.registry import Sampling


@dataclass
class SGHMCState:
    w: torch.Tensor
    v: torch.Tensor
    step_size: PerChain  # η, set by step_size=auto in warm-up (per chain: a model's parts, run/parts.py)
    friction: PerChain  # α, set by friction=auto in warm-up
    blocks: list[Block]  # the chains' random streams, in the blocks they are stepped in


class SGHMC(BlockedChains):
    grad_evals_per_step = 1
    minibatch = True

    def __init__(
        self,
        posterior: LocalizedPosterior,
        step_size: float,
        friction: float,
        compile: bool = False,
        share: Share | None = None,
    ) -> None:
        self.posterior = posterior
        self.share = share
        self.initial_step = step_size
        self.initial_friction = friction
        # compile: gradient, localization and update of a block as one compiled call (as in SGLD).
        self.fused = compile
        self._compiled_step = compile_step(self._kick, posterior.w_star.device) if compile else None

    @classmethod
    def from_sampling(cls, posterior: LocalizedPosterior, sampling: Sampling) -> SGHMC:
        """With the friction given, or where friction=auto starts (the run layer resolves it)."""
        friction = sampling.option("friction")
        return cls(posterior, sampling.step_size, friction, bool(sampling.compile), sampling.share)

    def _kick(
        self,
        w: torch.Tensor,
        v: torch.Tensor,
        idx: torch.Tensor | None,
        noise: torch.Tensor,
        eta: float,
        alpha: float,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """Loss, the new position and the new velocity, as blocks of columns (as SGLD's `_langevin`)."""
        loss, pieces = self.posterior.loss_and_grad_pieces(w, self.posterior.batch_at(idx))
        kick = math.sqrt(2 * alpha * eta)
        velocity = [(1 - alpha) * v[:, c] - eta * g + kick * noise[:, c] for c, g in pieces]
        return loss, [w[:, c] + u for (c, _), u in zip(pieces, velocity, strict=True)], velocity

    def init(self, w: torch.Tensor, gen: torch.Generator) -> SGHMCState:
        # Chains advance in blocks with their own random streams, spread over the CPU cores (blocks.py).
        blocks = layout(w.shape[0], gen, self.fused, self.share)
        return SGHMCState(w.clone(), torch.zeros_like(w), self.initial_step, self.initial_friction, blocks)

    def curvature_metric(self, state: SGHMCState) -> None:
        """η·h sets the step's bias and stability, h unscaled."""
        return None

    def set_step(self, state: SGHMCState, step: PerChain) -> None:
        """Change η, keeping the momenta v / sqrt(η): a velocity drawn at one step would be too fast (or
        slow) at another, and heat (or chill) the chains until friction forgets it."""
        state.v.mul_((step / state.step_size) ** 0.5)
        state.step_size = step

    def heating_per_noise(self, state: SGHMCState) -> PerChain:
        """The noise adds η²·V to the velocity's variance against the 2·α·η injected: a variance
        1 + η·V/(2α) too wide, so the LLC reads η·tr(V)/(4α) high."""
        return state.step_size / (4 * state.friction)

    def restart(self, state: SGHMCState, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, at rest."""
        state.w[rows] = self.posterior.w_star
        state.v[rows] = 0.0

    def _compile_block(self, state: SGHMCState, block: Block) -> None:
        assert self._compiled_step is not None
        w, v = state.w[block.chains], state.v[block.chains]
        idx = self.posterior.placeholder_indices(block.size)
        self._compiled_step(w, v, idx, torch.zeros_like(w), state.step_size, state.friction)

    def _step_block(self, state: SGHMCState, block: Block, j: int) -> torch.Tensor:
        w, v = state.w[block.chains], state.v[block.chains]
        eta, alpha = rows_of(state.step_size, block.chains), rows_of(state.friction, block.chains)
        idx = self.posterior.indices(block)
        if self._compiled_step is not None:
            loss, w_new, v_new = self._compiled_step(w, v, idx, block.normal(w), eta, alpha)
            torch.cat(w_new, dim=1, out=w)
            torch.cat(v_new, dim=1, out=v)
            return loss
        loss, grad = self.posterior.loss_and_grad(w, self.posterior.batch_at(idx), block.chains)
        noise = self.posterior.masked(block.normal(w), block.chains)
        if isinstance(eta, torch.Tensor) or isinstance(alpha, torch.Tensor):  # per part (run/parts.py)
            v.mul_(1 - alpha).sub_(grad * eta).add_(noise * (2 * alpha * eta) ** 0.5)
        else:
            v.mul_(1 - alpha).add_(grad, alpha=-eta).add_(noise, alpha=math.sqrt(2 * alpha * eta))
        w.add_(v)
        return loss
