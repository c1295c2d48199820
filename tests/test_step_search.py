"""step_size=auto: the warm-up search for SGLD and SGHMC, its criterion, and the step it picks."""

import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from llc.config import build_config
from llc.errors import ConfigError
from llc.model.posterior import LocalizedPosterior
from llc.problems import build_problem
from llc.run.erm import train
from llc.run.experiment import run_llc
from llc.samplers.driver import mala_acceptance
from llc.samplers.sghmc import SGHMC
from llc.samplers.step_search import (
    FRICTION_RANGE,
    FRICTION_SAFETY,
    HEAT,
    LOSS_SHRINK,
    ROUNDS,
    SAFETY,
    CurvatureStep,
    StepSearch,
    heat_rates,
    top_curvature,
)

RRR = {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1}


def test_the_largest_curvature_is_found_by_power_iteration():
    """For the `linear` problem U is quadratic: its Hessian is nβ·2·XᵀX/n ⊗ I + γ·I, known exactly.
    Preconditioned by G = c, the curvature the step sees is c times as large."""
    config = build_config("quick", {"problem": "linear", "widths": (5, 3), "sampler": "sgld", "chains": 3})
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    posterior = LocalizedPosterior(problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, 1.0)
    x = problem.x.double()
    exact = float(torch.linalg.eigvalsh(x.T @ x / x.shape[0]).max()) * 2 * config.resolved_nbeta + 1.0
    w = w_star.expand(3, -1) + 0.1 * torch.randn(3, w_star.shape[0], generator=torch.Generator())
    h, v = top_curvature(posterior, w, None, 30, torch.Generator().manual_seed(0))
    torch.testing.assert_close(h, torch.full_like(h, exact), rtol=0.02, atol=0.0)
    assert torch.allclose(v.norm(dim=1), torch.ones(3))
    scaled, _ = top_curvature(posterior, w, v, 3, torch.Generator(), torch.full_like(w, 0.5))
    torch.testing.assert_close(scaled, 0.5 * h, rtol=0.02, atol=0.0)


def test_the_recorded_step_comes_from_the_stiffest_curvature_of_the_later_half_of_warm_up():
    search = CurvatureStep()
    steps = [search.update(h) for h in (100.0, 400.0, math.nan, 300.0, 200.0, 250.0)]
    assert steps[0] == SAFETY / 100 and steps[2] is None  # a failed check keeps the step
    assert search.final == SAFETY / 300  # later half of (100, 400, 300, 200, 250): max(300, 200, 250)


def test_a_preconditioned_proposal_is_checked_on_its_own_scale():
    """With G = c everywhere, the preconditioned proposal of step eps is the plain one of step c·eps."""
    config = build_config("quick", {**RRR, "sampler": "sgld", "chains": 6})
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    posterior = LocalizedPosterior(problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, 1.0)
    w = posterior.w_star.expand(6, -1) + 0.01 * torch.randn(6, posterior.dim, generator=torch.Generator())
    plain = mala_acceptance(posterior, w, 3e-4, torch.Generator().manual_seed(1))
    scaled = mala_acceptance(posterior, w, 1e-4, torch.Generator().manual_seed(1), torch.full_like(w, 3.0))
    torch.testing.assert_close(plain, scaled, rtol=1e-4, atol=1e-5)


def test_step_size_auto_is_refused_where_it_cannot_run():
    for bad, words in [
        ({"sampler": "hmc", "step_size": "auto", "warmup": 100}, "tunes its step size"),
        ({"sampler": "sgld", "step_size": "auto", "warmup": 10}, "warmup >= 40"),
        ({"sampler": "sgld", "step_size": "auto", "warmup": 100, "compile": True}, "runs eager"),
    ]:
        with pytest.raises(ConfigError, match=words):
            build_config(None, {**RRR, **bad})


@pytest.mark.parametrize(("sampler", "precond"), [("sgld", "none"), ("sgld", "rmsprop"), ("sghmc", "none")])
def test_the_chosen_step_size_and_the_curvatures_behind_it_are_in_metrics(sampler, precond, tmp_path):
    overrides = {**RRR, "sampler": sampler, "precond": precond, "step_size": "auto", "warmup": 100}
    metrics = run_llc(build_config("quick", overrides), tmp_path).metrics
    chosen, curvatures = metrics["step_size_auto"], metrics["step_size_curvatures"]
    # A check before warm-up and one at the end of every round but the last.
    assert len(curvatures) == ROUNDS and metrics["chains_diverged"] == 0
    # SGLD's step is its ε (the curvatures are then those G^½·H·G^½ its preconditioner sees), SGHMC's
    # its η: the same bias on a direction of curvature h, ε·h/4 or η·h/4.
    # With friction=auto SGHMC takes half the step (FRICTION_SAFETY): its friction makes up for it.
    safety = SAFETY if sampler == "sgld" else FRICTION_SAFETY
    assert chosen == pytest.approx(safety / max(curvatures[len(curvatures) // 2 :]), rel=1e-9)
    # friction=auto comes with SGHMC's step_size=auto, and only there.
    assert ("friction_auto" in metrics) == (sampler == "sghmc")
    if sampler == "sghmc":
        assert FRICTION_RANGE[0] <= metrics["friction_auto"] <= FRICTION_RANGE[1]


def test_sghmc_keeps_its_momenta_when_its_step_changes():
    """v = sqrt(η)·p: a new η rescales v so that the momenta p, and the chains' temperature, stay."""
    config = build_config("quick", {**RRR, "sampler": "sghmc", "chains": 3})
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    posterior = LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, 1.0, 64
    )
    kernel = SGHMC(posterior, 1e-4, 0.1)
    state = kernel.init(w_star.expand(3, -1).clone(), torch.Generator().manual_seed(0))
    state.v.normal_(generator=torch.Generator().manual_seed(1)).mul_(1e-2)
    momenta = state.v / math.sqrt(state.step_size)
    kernel.set_step(state, 4e-6)
    assert state.step_size == 4e-6
    torch.testing.assert_close(state.v / math.sqrt(state.step_size), momenta)


def test_the_friction_holds_the_minibatch_heating_at_its_share_of_the_llc():
    """heat_rate measures tr(V), the minibatch gradient's noise variance, against a direct estimate
    from many minibatches, and scales it by the LLC at the chains' positions; a full-data step has none,
    so its friction goes to the floor."""
    config = build_config("quick", {**RRR, "sampler": "sghmc", "chains": 4})
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    posterior = LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, 1.0, 32
    )
    gen = torch.Generator().manual_seed(0)
    w = w_star.expand(4, -1) + 0.05 * torch.randn(4, posterior.dim, generator=gen)
    loss, full = posterior.loss_and_grad(w)
    noise = []
    for _ in range(400):
        idx = torch.randint(posterior.n, (4, 32), generator=gen)
        noise.append((posterior.loss_and_grad(w, posterior.gather(idx))[1] - full).square().sum(dim=1))
    loss0 = float(posterior.full_loss(w_star.unsqueeze(0))[0])
    llc = float((posterior.nbeta * (loss - loss0)).mean())
    expected = float(torch.stack(noise).mean()) / (4 * HEAT * llc)
    rates = [heat_rates(StepSearch.starting(True, 4), posterior, w, gen)[0] for _ in range(200)]
    assert sum(rates) / len(rates) == pytest.approx(expected, rel=0.1)
    search = CurvatureStep(tunes_friction=True, heat_rates=[1e4, 2e4, 4e4])
    assert search.friction(1e-5, last_only=True) == pytest.approx(0.4)
    assert search.friction(1e-5, last_only=False) == pytest.approx(0.3)  # later half: 2e4 and 4e4
    assert search.friction(1e-9, last_only=True) == FRICTION_RANGE[0]
    # Noise that would need more friction than the range allows takes a smaller step instead.
    assert search.cooled(1e-5, last_only=True) == 1e-5
    assert search.cooled(1e-3, last_only=True) == pytest.approx(FRICTION_RANGE[1] / 4e4)
    assert search.friction(search.cooled(1e-3, last_only=True), last_only=True) == pytest.approx(0.5)
    full_batch = LocalizedPosterior(problem.model, problem.x, problem.y, w_star, posterior.nbeta, 1.0)
    assert heat_rates(StepSearch.starting(True, 4), full_batch, w, gen) == [0.0]


def test_friction_auto_needs_sghmc_with_step_size_auto():
    assert build_config("full", {**RRR, "sampler": "sghmc"}).friction == "auto"
    assert build_config("full", {**RRR, "sampler": "sghmc", "friction": 0.2}).friction == 0.2
    assert build_config("full", {**RRR, "sampler": "sghmc", "step_size": 1e-6}).friction == 0.1
    with pytest.raises(ConfigError, match="friction=auto is set alongside step_size=auto"):
        build_config("full", {**RRR, "sampler": "sghmc", "step_size": 1e-6, "friction": "auto"})


# A deep linear network whose Hessian at w* has 155 directions stiffer than 1e4 and 728 held only by
# γ = 1 (measured): λ = 96.5 comes partly from the soft, degenerate directions, which SGLD at a step
# stable on the stiff ones does not reach in 5000 steps (−18%, docs/validation.md). SGHMC at low
# friction crosses them ballistically: −8% with every default (at the friction floor 0.05, still rising
# at 8,000 steps; −1.3% at the old floor 0.01, which heated other networks' runs, docs/samplers.md).
DEEP = {"problem": "dln", "widths": (18, 13, 11, 14, 13, 18), "true_rank": 5, "threads": 1}


@pytest.mark.slow
def test_sghmc_with_every_default_reaches_the_soft_directions_of_a_deep_network(tmp_path):
    metrics = run_llc(build_config(None, {**DEEP, "sampler": "sghmc"}), tmp_path).metrics
    assert abs(metrics["llc_rel_error"]) < 0.1, metrics
    assert metrics["friction_auto"] < 0.1  # below the fixed default, which reads 10% low here


# benchmarks/dln_scale.py's first network of about 1K parameters (d = 947, r = 2, λ = 71.5): SGLD at the
# step its stiffest direction allows fills only the stiff directions and reads about half of λ, with R-hat
# and the MALA check healthy (docs/validation.md). Until a sampler change fixes that, the run must say so.
DLN_SCALE_1K = {"problem": "dln", "widths": (18, 13, 11, 14, 13, 18), "true_rank": 2, "threads": 1}


@pytest.mark.slow
def test_sgld_on_a_deep_network_reads_within_10_percent_or_says_its_soft_directions_are_unfilled(tmp_path):
    config = build_config("full", {**DLN_SCALE_1K, "sampler": "sgld", "steps": 3000})
    metrics = run_llc(config, tmp_path).metrics
    print(metrics["llc_rel_error"], metrics["spread_gamma"], metrics["spread_growth"], metrics["flags"])
    if abs(metrics["llc_rel_error"]) >= 0.1:
        assert "soft_directions_unfilled" in metrics["flags"] and not metrics["trusted"], metrics


# Many points make the loss stiff (curvature ∝ nβ): the fixed default step, right at n = 5000, reads
# 42% high here (measured), while the step auto picks lands within a few percent.
STIFF = {"problem": "linear", "widths": (4, 3), "n_data": 50000, "eval_every": 0}


@pytest.mark.slow
def test_auto_finds_a_step_that_recovers_lambda_where_the_fixed_default_fails(tmp_path):
    fixed = run_llc(build_config("full", {**STIFF, "sampler": "sgld", "step_size": 1e-4}), tmp_path).metrics
    assert fixed["llc_rel_error"] > 0.2, fixed
    auto = run_llc(build_config("full", {**STIFF, "sampler": "sgld"}), tmp_path).metrics
    print(auto["step_size_auto"], auto["llc_mean"], auto["llc_true"])
    assert auto["step_size_auto"] < 5e-5 and abs(auto["llc_rel_error"]) < 0.1, auto


@dataclass
class FirstRound:
    """SGLD's step search on RRR after its first round (4 chains at w*): what the restart tests poke."""

    posterior: LocalizedPosterior
    kernel: Any
    state: Any
    search: StepSearch
    gen: torch.Generator
    warmup: int
    w_star: torch.Tensor
    first: float  # the step the first round chose


def after_the_first_round() -> FirstRound:
    from llc.samplers.sgld import SGLD
    from llc.samplers.step_search import search_round

    config = build_config(
        "quick", {**RRR, "sampler": "sgld", "chains": 4, "step_size": "auto", "warmup": 100}
    )
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    posterior = LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, 1.0, 64
    )
    kernel, gen = SGLD(posterior, config.resolved_step_size), torch.Generator().manual_seed(0)
    state = kernel.init(w_star.expand(4, -1).clone(), gen)
    search = StepSearch.starting(False, 4)
    search_round(search, 0, config.warmup, kernel, state, posterior, gen)
    return FirstRound(posterior, kernel, state, search, gen, config.warmup, w_star, state.step_size)


def test_a_chain_thrown_off_in_warm_up_restarts_at_w_star_and_later_steps_stay_under_a_tenth_of_that_one():
    from llc.samplers.step_search import search_round

    r = after_the_first_round()
    r.state.w[2] = math.nan
    search_round(r.search, 10, r.warmup, r.kernel, r.state, r.posterior, r.gen)
    assert torch.equal(r.state.w[2], r.w_star) and len(r.search.curvatures) == 2
    assert r.search.parts[0].ceiling == pytest.approx(r.first / LOSS_SHRINK)
    assert r.state.step_size == pytest.approx(r.first / LOSS_SHRINK, rel=0.05)
    search_round(r.search, 20, r.warmup, r.kernel, r.state, r.posterior, r.gen)
    assert r.state.step_size <= r.search.parts[0].ceiling


def test_a_chain_that_ends_a_round_where_its_step_is_past_the_stability_limit_restarts_at_w_star():
    """SGHMC at low friction flew in one round of warm-up down poly11's valley to a curvature 10^5 times
    w*'s; the steps set from there were too small ever to come back (LLC 474 against 0.38)."""
    from llc.samplers.step_search import UNSTABLE, search_round, top_curvature

    r = after_the_first_round()
    r.state.w[1] = 6 * r.w_star  # a linear network's curvature grows with the square of its weights' scale
    h, _ = top_curvature(r.posterior, r.state.w, None, 20, torch.Generator().manual_seed(1))
    assert h[1] * r.first > UNSTABLE > h[0] * r.first  # only chain 1 is past the limit
    search_round(r.search, 10, r.warmup, r.kernel, r.state, r.posterior, r.gen)
    assert torch.equal(r.state.w[1], r.w_star)
    assert r.search.parts[0].ceiling == pytest.approx(r.first / LOSS_SHRINK)
    assert r.state.step_size <= r.search.parts[0].ceiling


def test_a_model_s_parts_get_a_step_each_from_their_own_chains_and_a_lost_chain_caps_only_its_part():
    """Two parts of 4 chains in one run, the second localized 10^5 times as hard: one power iteration
    for all 8 chains, then each part's step SAFETY over its own chains' largest curvature, as a
    per-chain step [8, 1]; a chain thrown off caps its own part's later steps only."""
    from llc.samplers.sgld import SGLD
    from llc.samplers.step_search import search_round

    config = build_config(
        "quick", {**RRR, "sampler": "sgld", "chains": 8, "step_size": "auto", "warmup": 100}
    )
    problem = build_problem(config)
    w_star, _ = train(problem, config.erm_steps, config.erm_lr, config.seed)
    gamma = torch.tensor([1.0, 1e5]).repeat_interleave(4).unsqueeze(1)
    posterior = LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, gamma, 64
    )
    kernel, gen = SGLD(posterior, config.resolved_step_size), torch.Generator().manual_seed(0)
    state = kernel.init(w_star.expand(8, -1).clone(), gen)
    search = StepSearch.starting(False, chains=4, parts=2)
    search_round(search, 0, config.warmup, kernel, state, posterior, gen)
    h, _ = top_curvature(posterior, state.w, None, 30, torch.Generator().manual_seed(1))
    steps = state.step_size
    assert isinstance(steps, torch.Tensor) and steps.shape == (8, 1)
    for rows in (slice(0, 4), slice(4, 8)):
        assert torch.all(steps[rows] == steps[rows][0])
        assert float(steps[rows][0]) == pytest.approx(SAFETY / float(h[rows].max()), rel=0.05)
    assert float(steps[0]) > 10 * float(steps[4])
    first = [search.value(steps, k) for k in (0, 1)]
    state.w[5] = math.nan
    search_round(search, 10, config.warmup, kernel, state, posterior, gen)
    assert torch.equal(state.w[5], w_star)
    assert (
        search.parts[1].ceiling == pytest.approx(first[1] / LOSS_SHRINK)
        and search.parts[0].ceiling == math.inf
    )
