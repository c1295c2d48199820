"""`step_size=auto` for SGLD and SGHMC: the step set from the posterior's largest curvature in warm-up.

Unadjusted Langevin with step ε on a direction of curvature h samples a variance 1/(1 − ε·h/4) times
too large, and diverges beyond ε·h = 2: the step's bias is set by ε·h_max, whatever the dimension.
(The MALA acceptance is not: at 12 dimensions it read 0.94 where SGLD was 9% high.) So the search
measures h_max, the top eigenvalue of the Hessian of U (preconditioned as the kernel is), at the
chains' positions by power iteration on finite-difference Hessian-vector products of the full-batch
gradient, before warm-up and at the end of each of its ROUNDS rounds, and sets the kernel's
Langevin step to ε = SAFETY / h_max. The recorded steps use SAFETY over the largest h_max of the
later half of warm-up (the chains' positions by then). SGHMC's Langevin step is 2η/α (sghmc.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from llc.posterior import LocalizedPosterior
from llc.samplers.base import StepTunable, TunableState

# ε·h_max: a variance bias of about 5% along the stiffest direction (less in the others), a tenth of the
# stability limit. Measured on the built-in linear networks: SGLD within 5% of λ (docs/samplers.md).
SAFETY = 0.2
ROUNDS = 10  # rounds of warm-up; a curvature check ends each but the last
FIRST_ITERATIONS = 20  # power iterations before warm-up, from a random direction
ITERATIONS = 3  # power iterations per round, from the last round's direction
FD_STEP = 1e-3  # length of the finite-difference step along the (unit) direction


@dataclass
class CurvatureStep:
    """The search's state: the largest curvature found per check, and the power iteration's directions."""

    safety: float = SAFETY
    curvatures: list[float] = field(default_factory=list)  # h_max (the largest over the chains) per check
    direction: torch.Tensor | None = None  # [chains, d], unit rows

    def update(self, h_max: float) -> float | None:
        """Record a check's h_max; returns the Langevin step for the next round (None: keep the step, when
        the check found no finite curvature)."""
        if not (math.isfinite(h_max) and h_max > 0):
            return None
        self.curvatures.append(h_max)
        return self.safety / h_max

    @property
    def final(self) -> float | None:
        """The Langevin step to sample with: SAFETY over the largest h_max of the later half of checks."""
        later = self.curvatures[len(self.curvatures) // 2 :]
        return self.safety / max(later) if later else None


def top_curvature(
    posterior: LocalizedPosterior,
    w: torch.Tensor,
    direction: torch.Tensor | None,
    iterations: int,
    gen: torch.Generator,
    scale: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The top eigenvalue of G^½·∇²U(w)·G^½ per chain [chains] (G = `scale`, or 1), and its eigenvector,
    by `iterations` power iterations from `direction` (random when None). Rows of w that are not finite
    give inf."""
    root = None if scale is None else scale.sqrt()
    fresh = torch.randn(w.shape, generator=gen, dtype=w.dtype, device=w.device)
    # A chain without a direction (the first check, or a chain restarted at w*) starts from a random one.
    v = fresh if direction is None else torch.where(direction.norm(dim=1, keepdim=True) > 0, direction, fresh)
    v = v / v.norm(dim=1, keepdim=True)
    h = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for _ in range(iterations):
        step = v if root is None else root * v
        _, plus = posterior.loss_and_grad(w + FD_STEP * step)
        _, minus = posterior.loss_and_grad(w - FD_STEP * step)
        hv = (plus - minus) / (2 * FD_STEP)
        if root is not None:
            hv = root * hv
        h = (hv * v).sum(dim=1)
        v = hv / hv.norm(dim=1, keepdim=True)
    finite = torch.isfinite(h) & torch.isfinite(v).all(dim=1)
    return torch.where(finite, h.abs(), torch.full_like(h, math.inf)), torch.where(finite[:, None], v, 0.0)


def round_length(warmup: int) -> int:
    """Steps per round: warm-up split into ROUNDS rounds (at least one step each)."""
    return max(1, warmup // ROUNDS)


def search_round(
    search: CurvatureStep,
    t: int,
    warmup: int,
    kernel: StepTunable,
    state: TunableState,
    posterior: LocalizedPosterior,
    gen: torch.Generator,
) -> None:
    """step_size=auto: before warm-up and at the end of each round, measure the largest curvature at the
    chains' positions and give the kernel the step it allows; at the end of warm-up, the chosen step.
    A chain that the round threw off to non-finite values starts again from w*."""
    if t % round_length(warmup) == 0 and t < warmup:
        position = state.w
        lost = ~torch.isfinite(position).all(dim=1)
        if lost.any():
            kernel.restart(state, lost.nonzero().squeeze(1))
        eps, scale = kernel.langevin_proposal(state)
        iterations = FIRST_ITERATIONS if search.direction is None else ITERATIONS
        h, search.direction = top_curvature(posterior, position, search.direction, iterations, gen, scale)
        finite = h[torch.isfinite(h)]
        set_langevin_step(state, eps, search.update(float(finite.max()) if finite.numel() else math.nan))
    if t == warmup:
        eps, _ = kernel.langevin_proposal(state)
        set_langevin_step(state, eps, search.final)


def set_langevin_step(state: TunableState, current: float, wanted: float | None) -> None:
    """Scale the kernel's step size so that its Langevin step (langevin_proposal) becomes `wanted`."""
    if wanted is not None:
        state.step_size = state.step_size * wanted / current
