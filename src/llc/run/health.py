"""Whether a run's estimate can be trusted: the checks that flag it, each saying what to change.

A flagged run still writes its numbers, but metrics.json, results.csv and `llc run` say that they
are not to be read as an estimate (docs/diagnostics.md#flags).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# The MALA acceptance of a healthy SGLD step is about 0.9 or more; below it the step size, not the
# posterior, sets the chains' spread: measured (γ = 1, full preset), 0.80 read λ̂ 42% high on a stiff
# linear model, 0.60 read 60% high on a deep linear network, 0.42 read 20 times λ (γ = 100); 0.88 was
# within 5%.
MALA_FLOOR = 0.85
# Chains whose R-hat exceeds this clearly disagree (diagnostics.md): their mean is no estimate yet.
R_HAT_CEILING = 1.1
# HMC's acceptance under its target is not a flag: the Metropolis step keeps HMC exact at any acceptance,
# and what a low one costs (fewer effective draws) is what R-hat, the trend and steps=auto's ESS floor see.
# Every HMC run the old flag (0.3 under target) raised on a known λ was within 6% of it: the deep linear
# networks of benchmarks/dln_scale.py at 1K and 10K (-5.5% to +0.2%), dln [10,20,20,10] (-0.9%).
# MCLMC tunes towards an energy error variance of 5e-4 per dimension; ten times that is untrustworthy.
MCLMC_ENERGY_CEILING = 5e-3
# An ERM point whose loss is above the best by this fraction of the LLC biases the estimate by as much.
ERM_GAP_FRACTION = 0.05
# SGLD and SGHMC read high by the heating of their minibatch noise (samplers/step_search.py): friction=auto
# holds it at 3% in warm-up; chains that end where it is over 10% of the LLC have drifted somewhere
# stiffer (measured: a deep linear network read 23% high with 30% heating at the end).
HEATING_CEILING = 0.1
# The squared loss on unit-variance inputs has curvature about 2·nβ per direction of the posterior, and
# localization γ shrinks the estimate by about γ/(2·nβ): at γ ≤ 0.1·nβ by 5% or less, and the run
# estimates λ, not the localized LLC (γ = 100 at n = 5000 is 0.17·nβ, and read 10-35% low).
LAMBDA_GAMMA_FRACTION = 0.1
# Chains still filling the posterior: the last quarter's mean LLC above the second quarter's by this many
# standard errors (the chains' spread of that rise) and by this fraction of the estimate. Measured (full
# preset, γ = 1): the known-λ runs within 10% rose at most 7.6% at 3.0 se (SGHMC, dln [8,6,6,6,8]) and
# mostly fell; synthetic traces rising 20% over the run are caught (tests/test_health.py).
RISE_Z = 3.0
RISE_FRACTION = 0.05
# Soft directions unfilled: along random directions (mostly the soft ones in a large model) the chains are
# still spreading outwards like a free random walk, yet have reached a small fraction of the localization's
# radius 1/sqrt(γ), so every direction between the loss's stiff ones and γ is only partly filled.
# Measured (full preset, γ = 1, SGLD with step_size=auto): γ·E[proj²] 0.001 on a 947-parameter DLN
# (widths [18,13,11,14,13,18], r = 2) reading -51%, 0.0046 on dln [8,6,6,6,8] r = 2 reading -22%, both
# growing 2-fold; 0.021 on dln [10,20,20,10] r = 3 reading -7.8%, 0.14 on dln [4,3,3,4] (-5%); a regular
# model's chains sit at 0.001 without growing (linear [4,3], growth 1.01). Over the trust table's 288 runs
# (seeds 0-2, defaults, docs/validation.md) every trusted run still spreading at a reach under 0.02 read
# 15-32% low (SGLD on the DLNs, 5 runs, reach 0.012-0.019), and none within 10% was under 0.02; from
# 0.02 to 0.04 they split (dln [10,20,20,10] -5% to -7%, rrr [8,4,6] -1%, dln [4,3,3,4] at seed 2 -23%).
SPREAD_GAMMA_FLOOR = 0.02
SPREAD_GROWTH = 1.3
# No learning coefficient exceeds d/2 (a regular model's); an estimate above it by more than this factor is
# the sampler's heat. Measured: SGLD reads regular models up to 7% above d/2 (linear [4,3] and [6,5], full
# preset, both within 10%), while a fixed step of 1e-4 without warm-up read dln [10,20,20,10] at 2.7·d/2
# (1071 against λ = 50) and dln [8,6,6,6,8] at 200·d/2, both trusted before.
D_HALF_CEILING = 1.2
# An estimate within this many standard errors of 0: the chains never climbed measurably above L0, and no
# relative error can be claimed. Measured with llc.estimate's defaults (γ = 100, nβ = 145) on devinterp's
# normal crossing x·w1·w2 (λ = 0.5): SGLD 0.014 ± 0.009 and HMC 0.043 ± 0.012 (3.8 se) were trusted; the
# known-λ problems' runs within 10% (full preset) sit 38-155 se above 0.
NEVER_LEFT_Z = 5.0


# Each flag in a few words with its fix, for the tables that count flags over many runs (a run's own
# reason carries its numbers; docs/diagnostics.md#flags-runs-that-cannot-be-trusted has the detail).
FIXES = {
    "no_healthy_chain": "every chain diverged: lower step_size (or step_size=auto)",
    "most_chains_diverged": "most chains diverged: lower step_size (or step_size=auto)",
    "chains_disagree": "R-hat > 1.1, the chains have not mixed: raise steps and warmup, or use hmc",
    "mala_acceptance_low": "MALA acceptance < 0.85, the step is too large: lower step_size",
    "mclmc_energy_error_high": "MCLMC energy error high: raise warmup",
    "erm_not_converged": "w* is not a minimum: raise erm_steps",
    "minibatch_noise_heats": "minibatch noise raises the LLC > 10%: lower step_size or raise batch_size",
    "negative_llc": "the chains found losses below L0: raise erm_steps, or gamma",
    "still_rising": "the estimate still rises through the run: raise steps (or step_size)",
    "soft_directions_unfilled": "soft directions unfilled, reads low: use sampler=sghmc (more steps) or hmc",
    "llc_above_d_half": "the LLC exceeds d/2, the chains are heated: lower step_size, or step_size=auto",
    "never_left_w_star": "the LLC is within 5 se of 0: lower gamma, or raise step_size and steps",
}


@dataclass(frozen=True)
class Flag:
    name: str
    reason: str  # what was seen, and what to change


def assess(metrics: dict[str, Any], chains: int, sampler: str) -> list[Flag]:
    """The flags a run's metrics raise (none: the run passed every check)."""
    flags = []
    used = metrics.get("chains_used") or 0
    diverged = metrics.get("chains_diverged") or 0
    if used == 0:
        flags.append(
            Flag("no_healthy_chain", f"all {chains} chains diverged: lower step_size (or use step_size=auto)")
        )
    elif 2 * diverged > chains:
        flags.append(
            Flag(
                "most_chains_diverged",
                f"{diverged} of {chains} chains diverged; the others share their step size: lower "
                "step_size (or use step_size=auto)",
            )
        )
    r_hat = metrics.get("r_hat")
    if r_hat is not None and r_hat > R_HAT_CEILING:
        flags.append(
            Flag(
                "chains_disagree",
                f"R-hat {r_hat:.2f}: the chains have not mixed (they disagree, or are still drifting); "
                "raise steps (and warmup), or use a sampler that moves further per step (hmc)",
            )
        )
    mala = metrics.get("mala_acceptance_mean")
    if mala is not None and mala < MALA_FLOOR:
        flags.append(
            Flag(
                "mala_acceptance_low",
                f"MALA acceptance {mala:.2f} (healthy: 0.9 or more): the step size is too large for "
                "this curvature; lower step_size (or use step_size=auto)",
            )
        )
    energy = metrics.get("energy_change_var_per_dim")
    if sampler == "mclmc" and energy is not None and energy > MCLMC_ENERGY_CEILING:
        flags.append(
            Flag(
                "mclmc_energy_error_high",
                f"energy error variance per dimension {energy:.2g} (tuned towards 5e-4): raise warmup",
            )
        )
    gap = metrics.get("erm_gap_llc")
    scale = max(abs(metrics.get("llc_true") or metrics.get("llc_mean") or 0.0), 1.0)
    if gap is not None and gap > ERM_GAP_FRACTION * scale:
        flags.append(
            Flag(
                "erm_not_converged",
                f"L0 is above the best loss this network reaches by {gap:.3g} in LLC units (nβ·ΔL): "
                "w* is not a minimum; raise erm_steps",
            )
        )
    llc = metrics.get("llc_mean")
    heating = metrics.get("minibatch_heating")
    if heating is not None and llc is not None and llc > 0 and heating > HEATING_CEILING * llc:
        fix = "raise friction or batch_size" if sampler == "sghmc" else "lower step_size or raise batch_size"
        flags.append(
            Flag(
                "minibatch_noise_heats",
                f"the minibatch gradient's noise raises the LLC by about {heating:.3g} ({heating / llc:.0%} "
                f"of it) where the chains ended: {fix}",
            )
        )
    flags += _unsettled(metrics)
    if llc is not None and llc < 0:
        flags.append(
            Flag(
                "negative_llc",
                "the chains found losses below L0 on average: w* is not a local minimum (raise "
                "erm_steps) or the chains left its basin (raise gamma)",
            )
        )
    return flags


def estimates_lambda(gamma: float, nbeta: float) -> bool:
    """Whether localization is weak enough for the estimate to target λ rather than the localized LLC."""
    return gamma <= LAMBDA_GAMMA_FRACTION * nbeta


def lambda_note(gamma: float, nbeta: float) -> str:
    """Why a run on a known-λ problem does not report a relative error."""
    return (
        f"gamma={gamma:g} localizes strongly against nbeta={nbeta:.4g}: the estimate is the localized "
        f"LLC, which lies below λ (by 10-35% on the built-in linear networks at gamma=100); set "
        f"gamma <= {LAMBDA_GAMMA_FRACTION * nbeta:.3g} to estimate λ and get llc_rel_error"
    )


def _unsettled(metrics: dict[str, Any]) -> list[Flag]:
    """Estimates a filled posterior cannot give: still rising, soft directions unfilled, above d/2, 0."""
    flags = []
    llc, se = metrics.get("llc_mean"), metrics.get("llc_se")
    rise, rise_z = metrics.get("llc_rise"), metrics.get("llc_rise_z")
    if rising(metrics):
        flags.append(
            Flag(
                "still_rising",
                f"the mean LLC of the last quarter of draws is {rise:.0%} above the second quarter's "
                f"({rise_z:.1f} standard errors): the chains are still filling the posterior; raise steps "
                "(or step_size)",
            )
        )
    reach, growth = metrics.get("spread_gamma"), metrics.get("spread_growth")
    if soft_unfilled(metrics):
        flags.append(
            Flag(
                "soft_directions_unfilled",
                f"the chains are still spreading from w* ({growth:.1f}-fold from the second quarter of "
                f"draws to the last) and reached {reach:.2g} of the localization's 1/gamma along random "
                "directions: the soft directions are not filled and the estimate reads low (SGLD read up to "
                "52% low so on deep linear networks, with or without precond); use sampler=sghmc (with "
                "step_size=auto, raising steps while R-hat says it has not mixed) or sampler=hmc, which move "
                "further per step; more steps of this sampler widen its reach only in proportion",
            )
        )
    d = metrics.get("d")
    if llc is not None and d and llc > D_HALF_CEILING * d / 2:
        flags.append(
            Flag(
                "llc_above_d_half",
                f"the LLC {llc:.4g} exceeds d/2 = {d / 2:g}, which no learning coefficient does: the step "
                "size (or the minibatch noise) heats the chains; lower step_size, or use step_size=auto "
                "with warmup (and eval_every for the MALA check)",
            )
        )
    if llc is not None and se is not None and 0 <= llc < NEVER_LEFT_Z * se:
        flags.append(
            Flag(
                "never_left_w_star",
                f"the LLC {llc:.3g} is within {NEVER_LEFT_Z:g} standard errors ({se:.2g}) of 0: the chains "
                "never rose measurably above L0; lower gamma (the localization may hold them at w*) or "
                "raise step_size and steps",
            )
        )
    return flags


def rising(metrics: dict[str, Any]) -> bool:
    """The estimate still rises through the draws (RISE_Z, RISE_FRACTION)."""
    rise, rise_z = metrics.get("llc_rise"), metrics.get("llc_rise_z")
    return rise is not None and rise_z is not None and rise > RISE_FRACTION and rise_z > RISE_Z


def soft_unfilled(metrics: dict[str, Any]) -> bool:
    """The chains still spread from w* along random directions, far inside the localization's radius."""
    reach, growth = metrics.get("spread_gamma"), metrics.get("spread_growth")
    return reach is not None and growth is not None and reach < SPREAD_GAMMA_FLOOR and growth > SPREAD_GROWTH
