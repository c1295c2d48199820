"""Microcanonical Langevin Monte Carlo (Robnik et al. 2023), unadjusted, as in BlackJAX.

Isokinetic dynamics with unit-norm momentum u, a leapfrog integrator with the ESH momentum update,
and partial momentum refresh with decoherence length L. The step size is tuned so that the energy error
per dimension has variance `DESIRED_ENERGY_VAR`, and L is set from the spread of positions seen in the
second half of warm-up.

Unlike BlackJAX, the step-size rule keeps running after warm-up (L stays fixed): on a singular posterior
the chains spread from w* for thousands of steps into stiffer regions, so a step fixed at the end of a
short warm-up grew 50-200 times too large for its energy target there (devinterp's reduced-rank cases,
the DLNs), and the unadjusted chains read 10-54% high. Held at its target, the step's bias stays at the
level the target sets (docs/samplers.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import FullBatchKernel, StepInfo
from llc.samplers.registry import Sampling

DESIRED_ENERGY_VAR = 5e-4
TRUST_IN_ESTIMATE = 1.5
EFFECTIVE_SAMPLES = 150


@dataclass
class MCLMCTuning:
    """Warm-up's statistics: the step-size rule's weighted averages, and the positions' moments."""

    x_avg: torch.Tensor  # [chains, 1]
    w_avg: torch.Tensor  # [chains, 1]
    count: torch.Tensor  # [1]: positions accumulated (second half of warm-up)
    w_sum: torch.Tensor  # [chains, d]
    w_square_sum: torch.Tensor  # [chains, d]
    t: int = 0  # warm-up steps taken


@dataclass
class MCLMCState:
    w: torch.Tensor
    u: torch.Tensor
    loss: torch.Tensor
    potential: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor  # [chains, 1]
    L: torch.Tensor  # [chains, 1]
    gen: torch.Generator  # momentum refreshes
    tuning: MCLMCTuning


class MCLMC(FullBatchKernel):
    grad_evals_per_step = 1

    def __init__(self, posterior: LocalizedPosterior, step_size: float, warmup: int) -> None:
        self.posterior = posterior
        self.initial_step = step_size
        self.warmup = warmup  # L is set at its last step

    @classmethod
    def from_sampling(cls, posterior: LocalizedPosterior, sampling: Sampling) -> MCLMC:
        return cls(posterior, sampling.step_size, sampling.warmup)

    def init(self, w: torch.Tensor, gen: torch.Generator) -> MCLMCState:
        w = w.clone()
        loss, grad = self.posterior.loss_and_grad(w)
        u = _normalize(
            self.posterior.masked(torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype))
        )
        step = torch.full((w.shape[0], 1), self.initial_step, dtype=w.dtype, device=w.device)
        # Until warm-up measures the posterior's spread, take L = sqrt(d) initial step sizes (d: the
        # dimension the chain moves in, its part's where the run is restricted).
        L = step * _sqrt(self.posterior.part_dims())
        count = torch.zeros(1, dtype=w.dtype, device=w.device)
        tuning = MCLMCTuning(
            torch.zeros_like(step), torch.zeros_like(step), count, torch.zeros_like(w), torch.zeros_like(w)
        )
        return MCLMCState(w, u, loss, self.posterior.potential(w, loss), grad, step, L, gen, tuning)

    def _momentum_update(
        self, u: torch.Tensor, grad: torch.Tensor, eps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """ESH update of unit momentum u by the log-density gradient -grad over time eps.

        Returns the new momentum and the kinetic energy change."""
        dim = self.posterior.part_dims()
        g_norm = grad.norm(dim=1, keepdim=True).clamp_min(1e-30)
        e = -grad / g_norm
        ue = (u * e).sum(dim=1, keepdim=True)
        delta = eps * g_norm / (dim - 1)
        zeta = torch.exp(-delta)
        u_new = e * (1 - zeta) * (1 + zeta + ue * (1 - zeta)) + 2 * zeta * u
        kinetic = (delta - math.log(2) + torch.log(1 + ue + (1 - ue) * zeta**2)) * (dim - 1)
        return _normalize(u_new), kinetic[:, 0]

    def step(self, state: MCLMCState, tune: bool) -> tuple[MCLMCState, StepInfo]:
        eps = state.step_size
        u, k1 = self._momentum_update(state.u, state.grad, 0.5 * eps)
        w = state.w + eps * u
        loss, grad = self.posterior.loss_and_grad(w)
        u, k2 = self._momentum_update(u, grad, 0.5 * eps)
        potential = self.posterior.potential(w, loss)
        energy_change = (potential - state.potential) + k1 + k2
        # Partial refresh: u <- c1·u + c2·z/sqrt(d), renormalized.
        c1 = torch.exp(-eps / state.L)
        z = torch.randn(u.shape, generator=state.gen, device=u.device, dtype=u.dtype)
        z = self.posterior.masked(z) / _sqrt(self.posterior.part_dims())
        u = _normalize(c1 * u + torch.sqrt(1 - c1**2) * z)
        ok = energy_change.isfinite() & w.isfinite().all(dim=1)
        if tune:
            ok = self._tune(state, energy_change, ok, w)
        else:
            state.step_size = self._next_step(state, energy_change)
        keep = ok.unsqueeze(1)
        state.w = torch.where(keep, w, state.w)
        state.u = torch.where(keep, u, state.u)
        state.grad = torch.where(keep, grad, state.grad)
        state.loss = torch.where(ok, loss, state.loss)
        state.potential = torch.where(ok, potential, state.potential)
        stats = {"energy_change": energy_change, "step_size": eps[:, 0], "potential": state.potential}
        return state, StepInfo(state.loss, stats)

    def _tune(
        self, state: MCLMCState, energy_change: torch.Tensor, ok: torch.Tensor, w: torch.Tensor
    ) -> torch.Tensor:
        """BlackJAX's step-size rule; L from the positions' variance over the second half of warm-up."""
        tuning = state.tuning
        tuning.t += 1
        # A huge energy error rejects the step and shrinks the step size.
        too_big = (energy_change.square() / self._dim() > 1e4) | ~ok
        ok = ok & ~too_big
        new_step = self._next_step(state, energy_change)
        state.step_size = torch.where(too_big.unsqueeze(1), 0.8 * state.step_size, new_step)
        if tuning.t > self.warmup // 2:
            kept = torch.where(ok.unsqueeze(1), w, state.w)
            tuning.count += 1
            tuning.w_sum += kept
            tuning.w_square_sum += kept.square()
        # With too few warm-up draws the spread is noise: keep the initial L then.
        if tuning.t == self.warmup and tuning.count.item() >= 10:
            mean = tuning.w_sum / tuning.count
            var = (tuning.w_square_sum / tuning.count - mean**2).clamp_min(0)
            state.L = torch.sqrt(var.sum(dim=1, keepdim=True)).clamp_min(1e-12)
        return ok

    def _dim(self) -> torch.Tensor | int:
        dims = self.posterior.part_dims()
        return dims if isinstance(dims, int) else dims[:, 0]

    def _next_step(self, state: MCLMCState, energy_change: torch.Tensor) -> torch.Tensor:
        """The step size at which the energy error per dimension would have variance DESIRED_ENERGY_VAR:
        BlackJAX's weighted average of the squared errors scaled by step**6 (as in warm-up, after it)."""
        tuning = state.tuning
        xi = (energy_change.square() / (self._dim() * DESIRED_ENERGY_VAR)).nan_to_num(1e8).unsqueeze(1) + 1e-8
        weight = torch.exp(-0.5 * (torch.log(xi) / (6.0 * TRUST_IN_ESTIMATE)) ** 2)
        decay = (EFFECTIVE_SAMPLES - 1.0) / (EFFECTIVE_SAMPLES + 1.0)
        tuning.x_avg = decay * tuning.x_avg + weight * (xi / state.step_size**6)
        tuning.w_avg = decay * tuning.w_avg + weight
        return (tuning.x_avg / tuning.w_avg) ** (-1.0 / 6.0)


def _normalize(u: torch.Tensor) -> torch.Tensor:
    return u / u.norm(dim=1, keepdim=True).clamp_min(1e-30)


def _sqrt(dim: torch.Tensor | int) -> torch.Tensor | float:
    return math.sqrt(dim) if isinstance(dim, int) else dim.sqrt()
