"""`step_size=auto` for SGLD and SGHMC: the step set from the posterior's largest curvature in warm-up.

Unadjusted Langevin with step ε on a direction of curvature h samples a variance 1/(1 − ε·h/4) times
too large, and diverges beyond ε·h = 2: the step's bias is set by ε·h_max, whatever the dimension.
(The MALA acceptance is not: at 12 dimensions it read 0.94 where SGLD was 9% high.) So the search
measures h_max, the top eigenvalue of the Hessian of U (preconditioned as the kernel is), at the
chains' positions by power iteration on finite-difference Hessian-vector products of the full-batch
gradient, before warm-up and at the end of each of its ROUNDS rounds, and sets the kernel's
Langevin step to ε = SAFETY / h_max. The recorded steps use SAFETY over the largest h_max of the
later half of warm-up (the chains' positions by then). The step is the kernel's (`set_step`): SGLD's
ε, SGHMC's η (whose product with h sets SGHMC's bias in the same way, whatever its friction), with h
in the kernel's `curvature_metric`.

friction=auto (SGHMC, with step_size=auto) sets the friction α from the heating the stochastic gradient
causes. On a direction where the minibatch gradient has noise variance V, SGHMC samples a variance
1 + η·V/(2α) times too large, so the LLC reads η·tr(V)/(4α) too high, tr(V) being the minibatch
gradient's total noise variance E‖∇U_B − ∇U‖². Each check after the first measures tr(V) and the LLC
at the chains' positions (one fresh minibatch per chain), and α is set so that this heating is HEAT
of the LLC: the lowest friction, and so the fastest mixing along soft directions, that the minibatch
noise allows; where that would take a friction above FRICTION_RANGE, η is lowered instead. The
recorded steps use the mean of the later half's measurements.

A model's parts run as one run (run/parts.py: consecutive groups of chains, each group one part) search
a step per part: one batched power iteration for all chains, then each part's step (and friction) from
its own chains' curvatures and noise, as a run of that part alone would (`StepSearch`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import cast

import torch

from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import FrictionState, PerChain, StepTunable, TunableState

# ε·h_max: a variance bias of about 5% along the stiffest direction (less in the others), a tenth of the
# stability limit. Measured on the built-in linear networks: SGLD within 5% of λ (docs/samplers.md).
SAFETY = 0.2
ROUNDS = 10  # rounds of warm-up; a curvature check ends each but the last
FIRST_ITERATIONS = 20  # power iterations before warm-up, from a random direction
ITERATIONS = 3  # power iterations per round, from the last round's direction
FD_STEP = 1e-3  # length of the finite-difference step along the (unit) direction
# friction=auto: the minibatch noise may raise the LLC by this fraction; the friction stays within
# FRICTION_RANGE. Its floor: the chains' energy settles in about 1/α steps, at 0.05 within a warm-up round
# of the default 200 steps (20), so each round's measurement sees chains that have taken its friction and
# step. At 0.01 the runs ended heated 2-3 times what warm-up measured (devinterp's rrr [4,3,8] +15%), and
# full-batch chains coasted along poly12's valleys until 2 of 8 diverged; at 0.05 SGHMC went from 11 to
# 20 of 24 known-λ runs trusted and within 10% at two seeds (docs/validation.md).
HEAT = 0.03
FRICTION_RANGE = (0.05, 0.5)
# With friction=auto, SGHMC's η·h_max: half SAFETY. The friction follows η (α ∝ η at a given heating),
# and how far the chains move depends on η/α only, so a smaller η costs no mixing and halves the step's
# bias, which adds to the heating's (docs/samplers.md).
FRICTION_SAFETY = SAFETY / 2
# A round that threw a chain off to non-finite values had too large a step, whatever the curvature said: at
# a singular w* (a normal crossing) the curvature there is γ alone, and grows only where the chains go.
# Later steps stay under the losing step divided by this.
LOSS_SHRINK = 10.0
# A chain that ends a round where its step times the curvature there is past this (the stability limit)
# was thrown off too, if still finite: restarted at w*, and later steps stay under the losing step over
# LOSS_SHRINK. SGHMC at low friction on devinterp's poly11 (a valley whose walls stiffen with distance)
# flew in one round to a curvature 10^5 times w*'s, and the steps set from there were too small ever to
# come back (LLCs of 474 and 4.5e6 against 0.38).
UNSTABLE = 2.0


@dataclass
class CurvatureStep:
    """One part's search (a plain run has one): the largest curvature found per check, the friction's
    measurements, and the step's ceiling."""

    safety: float = SAFETY
    curvatures: list[float] = field(default_factory=list)  # h_max (the largest over the chains) per check
    tunes_friction: bool = False  # friction=auto
    # friction=auto: per check after the first, tr(V) / (4·HEAT·LLC): the friction per unit of η
    heat_rates: list[float] = field(default_factory=list)
    ceiling: float = math.inf  # the largest step allowed: LOSS_SHRINK under the last that lost a chain

    @classmethod
    def starting(cls, tunes_friction: bool) -> CurvatureStep:
        """The search at the start of warm-up; with friction=auto, at FRICTION_SAFETY."""
        return cls(FRICTION_SAFETY, tunes_friction=True) if tunes_friction else cls()

    def update(self, h_max: float) -> float | None:
        """Record a check's h_max; returns the Langevin step for the next round (None: keep the step, when
        the check found no finite curvature)."""
        if not (math.isfinite(h_max) and h_max > 0):
            return None
        self.curvatures.append(h_max)
        return min(self.safety / h_max, self.ceiling)

    @property
    def final(self) -> float | None:
        """The Langevin step to sample with: SAFETY over the largest h_max of the later half of checks,
        and under the ceiling."""
        later = self.curvatures[len(self.curvatures) // 2 :]
        return min(self.safety / max(later), self.ceiling) if later else None

    def _rate(self, last_only: bool) -> float | None:
        """friction=auto's friction per unit of η, from the last measurement or (for the recorded steps)
        the mean of the later half's; None before any."""
        rates = self.heat_rates[-1:] if last_only else self.heat_rates[len(self.heat_rates) // 2 :]
        return sum(rates) / len(rates) if rates else None

    def friction(self, step: float, last_only: bool) -> float | None:
        """friction=auto: the friction that keeps the heating at HEAT for SGHMC's step η (None: keep)."""
        rate = self._rate(last_only) if self.tunes_friction else None
        if rate is None:
            return None
        low, high = FRICTION_RANGE
        return min(max(step * rate, low), high)

    def cooled(self, step: float | None, last_only: bool) -> float | None:
        """friction=auto: `step`, or the smaller η at which the highest friction keeps the heating at
        HEAT when the minibatch noise needs more friction than that."""
        rate = self._rate(last_only) if self.tunes_friction else None
        if step is None or rate is None or step * rate <= FRICTION_RANGE[1]:
            return step
        return FRICTION_RANGE[1] / rate


@dataclass
class StepSearch:
    """step_size=auto's progress: one CurvatureStep per part, each part `chains` consecutive chains (a
    plain run is one part; a model's parts batched, run/parts.py, one per part), and the power
    iteration's directions for all chains. The steps it sets are one number for one part, else one per
    chain [chains, 1]."""

    parts: list[CurvatureStep]
    chains: int  # per part
    direction: torch.Tensor | None = None  # [all chains, d], unit rows
    loss0: float | None = None  # the full-data loss at w* (friction=auto)

    @classmethod
    def starting(cls, tunes_friction: bool, chains: int, parts: int = 1) -> StepSearch:
        return cls([CurvatureStep.starting(tunes_friction) for _ in range(parts)], chains)

    @property
    def tunes_friction(self) -> bool:
        return self.parts[0].tunes_friction

    @property
    def curvatures(self) -> list[float]:
        """Every part's h_max per check, part after part (one part: its checks)."""
        return [h for part in self.parts for h in part.curvatures]

    def rows(self, k: int) -> slice:
        return slice(k * self.chains, (k + 1) * self.chains)

    def value(self, per_chain: PerChain, k: int) -> float:
        """Part k's value of a step or friction that is one number or one per chain."""
        if isinstance(per_chain, float | int):
            return float(per_chain)
        return float(per_chain[k * self.chains, 0])

    def per_chain(self, value: PerChain, like: torch.Tensor) -> torch.Tensor:
        """A step or friction as one per chain [chains, 1], in `like`'s dtype and device."""
        if isinstance(value, torch.Tensor):
            return value
        return torch.full((like.shape[0], 1), float(value), dtype=like.dtype, device=like.device)

    def combine(
        self, wanted: list[float | None], current: PerChain | None, like: torch.Tensor
    ) -> PerChain | None:
        """The kernel's new step (or friction) from each part's wanted one (None: keep the part's
        `current`): one number for one part, else one per chain [chains, 1] in `like`'s dtype."""
        if len(self.parts) == 1:
            return wanted[0]
        if current is None or all(x is None for x in wanted):
            return None
        values = [self.value(current, k) if x is None else x for k, x in enumerate(wanted)]
        out = torch.tensor(values, dtype=like.dtype, device=like.device)
        return out.repeat_interleave(self.chains).unsqueeze(1)


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
    fresh = posterior.masked(torch.randn(w.shape, generator=gen, dtype=w.dtype, device=w.device))
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
    search: StepSearch,
    t: int,
    warmup: int,
    kernel: StepTunable,
    state: TunableState,
    posterior: LocalizedPosterior,
    gen: torch.Generator,
) -> None:
    """step_size=auto: before warm-up and at the end of each round, measure the largest curvature at the
    chains' positions and give the kernel the step it allows (per part); at the end of warm-up, the
    chosen step. A chain that the round threw off to non-finite values starts again from w*."""
    if t % round_length(warmup) == 0 and t < warmup:
        position = state.w
        lost = ~torch.isfinite(position).all(dim=1)
        if lost.any():
            _restart(search, kernel, state, lost)
        scale = kernel.curvature_metric(state)
        iterations = FIRST_ITERATIONS if search.direction is None else ITERATIONS
        h, search.direction = top_curvature(posterior, position, search.direction, iterations, gen, scale)
        unstable = torch.isfinite(h) & (h * search.per_chain(state.step_size, h).squeeze(1) > UNSTABLE)
        if t > 0 and unstable.any():
            _restart(search, kernel, state, unstable)
            scale = kernel.curvature_metric(state)
            h, search.direction = top_curvature(posterior, state.w, None, FIRST_ITERATIONS, gen, scale)
        rates = heat_rates(search, posterior, state.w, gen) if search.tunes_friction and t > 0 else None
        steps: list[float | None] = []
        for k, part in enumerate(search.parts):
            h_part = h[search.rows(k)]
            finite = h_part[torch.isfinite(h_part)]
            step = part.update(float(finite.max()) if finite.numel() else math.nan)
            if rates is not None and math.isfinite(rates[k]):  # at t = 0 every chain is still at w*
                part.heat_rates.append(rates[k])
            steps.append(part.cooled(step, last_only=True))
        set_step(kernel, state, search.combine(steps, state.step_size, state.w))
        frictions = [p.friction(search.value(state.step_size, k), True) for k, p in enumerate(search.parts)]
        set_friction(state, search.combine(frictions, getattr(state, "friction", None), state.w))
    if t == warmup:
        final = [part.cooled(part.final, last_only=False) for part in search.parts]
        set_step(kernel, state, search.combine(final, state.step_size, state.w))
        frictions = [p.friction(search.value(state.step_size, k), False) for k, p in enumerate(search.parts)]
        set_friction(state, search.combine(frictions, getattr(state, "friction", None), state.w))


def _restart(search: StepSearch, kernel: StepTunable, state: TunableState, chains: torch.Tensor) -> None:
    """Put the `chains` (a boolean mask) back at w*; their parts' later steps stay LOSS_SHRINK under
    this one."""
    kernel.restart(state, chains.nonzero().squeeze(1))
    for k, part in enumerate(search.parts):
        if chains[search.rows(k)].any():
            part.ceiling = min(part.ceiling, search.value(state.step_size, k) / LOSS_SHRINK)


def set_step(kernel: StepTunable, state: TunableState, wanted: PerChain | None) -> None:
    """Give the kernel the step `wanted` (None: keep its step)."""
    if wanted is not None:
        kernel.set_step(state, wanted)


def set_friction(state: TunableState, friction: PerChain | None) -> None:
    if friction is not None:
        cast(FrictionState, state).friction = friction


def heat_rates(
    search: StepSearch, posterior: LocalizedPosterior, w: torch.Tensor, gen: torch.Generator
) -> list[float]:
    """Per part, tr(V) / (4·HEAT·LLC) at the chains' positions w (friction=auto): the minibatch
    gradient's noise variance (minibatch_noise) against the LLC from the full-data loss, both averaged
    over the part's chains that are finite. nan where there is nothing to measure."""
    if search.loss0 is None:
        search.loss0 = float(posterior.full_loss(posterior.w_star.unsqueeze(0))[0])
    loss, noise = minibatch_noise(posterior, w, gen, draws=1)
    llc = posterior.nbeta * (loss - search.loss0)
    rates = []
    for k in range(len(search.parts)):
        noise_k, llc_k = noise[search.rows(k)], llc[search.rows(k)]
        ok = torch.isfinite(noise_k) & torch.isfinite(llc_k)
        if not ok.any():
            rates.append(math.nan)
            continue
        rates.append(float(noise_k[ok].mean()) / (4 * HEAT * max(float(llc_k[ok].mean()), 1.0)))
    return rates


def minibatch_noise(
    posterior: LocalizedPosterior, w: torch.Tensor, gen: torch.Generator, draws: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-data loss [chains] at w and tr(V) [chains], the minibatch gradient's total noise variance
    E‖∇U_B − ∇U‖², from `draws` fresh minibatches per chain (0 for a step on all n points)."""
    loss, full = posterior.loss_and_grad(w)
    noise = torch.zeros_like(loss)
    if posterior.batch_size is not None and posterior.batch_size < posterior.n:
        for _ in range(draws):
            idx = torch.randint(
                posterior.n, (w.shape[0], posterior.batch_size), generator=gen, device=w.device
            )
            _, minibatch = posterior.loss_and_grad(w, posterior.gather(idx))
            noise += (minibatch - full).square().sum(dim=1) / draws
    return loss, noise


def minibatch_heating(
    kernel: StepTunable,
    state: TunableState,
    posterior: LocalizedPosterior,
    gen: torch.Generator,
    parts: int = 1,
) -> list[float | None]:
    """Per part (`parts` groups of consecutive chains, run/parts.py), how much the minibatch gradient's
    noise raises the LLC at the chains' positions, in LLC units: the kernel's heating per unit of tr(V)
    times tr(V) from 4 minibatches per chain, averaged over the finite chains; None where the kernel
    cannot say (a preconditioned SGLD) or no chain is finite."""
    factor = kernel.heating_per_noise(state)
    if factor is None:
        return [None] * parts
    _, noise = minibatch_noise(posterior, kernel.position(state), gen, draws=4)
    heating = noise * (factor.squeeze(1) if isinstance(factor, torch.Tensor) else factor)
    per_part = []
    for rows in heating.chunk(parts):
        finite = rows[torch.isfinite(rows)]
        per_part.append(float(finite.mean()) if finite.numel() else None)
    return per_part
