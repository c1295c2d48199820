"""devinterp's known-λ tests (its repository's tests/slt/), ported: each case with devinterp's own sampler
settings translated into this project's keys, and with `llc.estimate`'s defaults (nothing set).

Every case is asserted against its finite-n expectation (devinterp_cases.py), not λ, so that no machine's
arithmetic decides the verdict: the polynomials' by quadrature (at n = 1000 and gamma = 1, 12-42% under
λ, most where the largest power repeats), reduced-rank regression's by rrr_finite_n_llc (12-37% above λ
where w* fits the noise). docs/validation.md has the measured table.
"""

from __future__ import annotations

import numpy as np
import pytest
from devinterp_cases import (
    POLYNOMIALS,
    REDUCED_RANKS,
    RRR_FINITE_N,
    Case,
    finite_n_llc,
    polynomial,
    reduced_rank,
    rrr_finite_n_llc,
)

import llc
from llc.problems.truth import rrr_learning_coefficient
from llc.samplers.registry import SAMPLERS

CASES = {
    **{f"poly{p}{q}": (lambda p=p, q=q: polynomial((p, q))) for p, q in POLYNOMIALS},
    **{f"rrr{m}{h}{n}": (lambda m=m, h=h, n=n: reduced_rank(m, h, n)) for m, h, n in REDUCED_RANKS},
}
# devinterp's SGLD accepts a polynomial when λ lies within 3.5 standard deviations of its chain means.
# Its rrr_test.py accepts reduced-rank regression within 30% of λ; here `rrr [8,3,4]` reads 8.08 with its
# settings (+35%), so these are held to the finite-n bracket below, as the defaults are.
DEVINTERP_SDS = 3.5


# The defaults' polynomials within POLY_RTOL of their finite-n expectation (or 4 standard errors, whichever
# is wider); reduced-rank regression within RRR_RTOL of its finite-n expectation (RRR_FINITE_N, by
# rrr_finite_n_llc: B integrated in closed form, A by Metropolis-adjusted HMC). SGLD and SGHMC read above it
# by the minibatch noise's heating, which they measure and report (minibatch_heating): their estimate
# less that heating is held to the same margin. devinterp's own settings are held to the bracket between λ
# of rank 0 and λ at w*'s own rank (w* fits the noise at full rank), as its 30% rule is too tight for them.
POLY_RTOL = 0.3
RRR_RTOL = 0.1
# SGLD on poly22, once a strict xfail (0.084 against 0.144 in 1,000 fixed steps), fills with steps=auto:
# 0.141 at 8,000 steps (docs/validation.md).


def rrr_bracket(case: Case) -> tuple[float, float]:
    m, h, n = case.model.fc1.in_features, case.model.fc1.out_features, case.model.fc2.out_features
    return case.llc_true, rrr_learning_coefficient(m, h, n, min(m, h, n))


DEFAULT_RUNS = [pytest.param(name, sampler, id=f"{name}-{sampler}") for name in CASES for sampler in SAMPLERS]


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_devinterps_settings_meet_its_polynomial_rule_and_the_rrr_bracket(name):
    case: Case = CASES[name]()
    estimate = llc.estimate(case.model, case.data, loss="mse", sampler="sgld", threads=1, **case.devinterp)
    print(f"{name}: {estimate.llc_mean:.3f} ± {estimate.llc_se:.3f} against λ = {case.llc_true:.3f}")
    if name.startswith("poly"):
        chain_means = estimate.idata.posterior["llc"].mean(dim="draw").values
        assert abs(case.llc_true - estimate.llc_mean) < DEVINTERP_SDS * float(np.std(chain_means))
    else:
        low, high = rrr_bracket(case)
        assert (1 - RRR_RTOL) * low < estimate.llc_mean < (1 + RRR_RTOL) * high


@pytest.mark.slow
@pytest.mark.parametrize(("name", "sampler"), DEFAULT_RUNS)
def test_llc_estimates_defaults_read_each_case_within_its_margin(name, sampler):
    case: Case = CASES[name]()
    estimate = llc.estimate(case.model, case.data, loss="mse", sampler=sampler, threads=1)
    metrics = estimate.metrics
    assert metrics["gamma_auto"] == 1.0, metrics["gamma_reason"]  # every case's w* is a minimum
    assert metrics["chains_diverged"] == 0
    if name.startswith("poly"):
        expected = finite_n_llc(case, gamma=1.0)
        print(f"{name} {sampler}: {estimate.llc_mean:.3f} ± {estimate.llc_se:.3f} against {expected:.3f}")
        inside = abs(estimate.llc_mean - expected) < max(POLY_RTOL * expected, 4 * estimate.llc_se)
    else:
        expected = RRR_FINITE_N[name]
        heating = metrics.get("minibatch_heating") or 0.0
        print(f"{name} {sampler}: {estimate.llc_mean:.3f} ± {estimate.llc_se:.3f} (heating {heating:.3f})")
        margin = max(RRR_RTOL * expected, 4 * estimate.llc_se)
        inside = min(abs(estimate.llc_mean - expected), abs(estimate.llc_mean - heating - expected)) < margin
    # Outside the margin, the run must say so (MCLMC's energy error flags its high readings).
    assert inside or not metrics["trusted"], metrics["flags"]


@pytest.mark.slow
def test_the_stored_rrr_finite_n_values_are_what_rrr_finite_n_llc_computes():
    """RRR_FINITE_N (64 chains × 3,000 draws) again from a shorter, independent run, and the integral
    moves with γ as it must: a stronger localization keeps the chains nearer w*, a smaller excess."""
    case = reduced_rank(5, 3, 5)
    mean, se = rrr_finite_n_llc(case, gamma=1.0, chains=16, draws=450, seed=1)
    assert abs(mean - RRR_FINITE_N["rrr535"]) < max(0.02 * mean, 5 * se), (mean, se)
    tight, _ = rrr_finite_n_llc(case, gamma=1000.0, chains=16, draws=300, seed=1)
    assert tight < 0.9 * mean


@pytest.mark.slow
def test_mclmc_holds_its_energy_error_through_sampling_where_its_chains_spread():
    """MCLMC's step keeps its energy target after warm-up: with the step frozen at the end of the 200
    warm-up steps, rrr [4,3,8]'s chains spread into stiffer regions and ran at 0.029 per dimension
    (58 times the target), reading +12.6% of the finite-n value, flagged."""
    case = CASES["rrr438"]()
    metrics = llc.estimate(case.model, case.data, loss="mse", sampler="mclmc", threads=1).metrics
    assert metrics["energy_change_var_per_dim"] < 2e-3, metrics["energy_change_var_per_dim"]
    assert metrics["trusted"] and abs(metrics["llc_mean"] / RRR_FINITE_N["rrr438"] - 1) < 0.1
