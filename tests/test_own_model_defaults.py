"""Your own model's defaults (problem module, llc.estimate): a warm-up, step_size=auto, gamma=auto decided
from the gradient at w*; explicit values win, and the built-in problems keep theirs."""

from __future__ import annotations

import pytest
import torch
from devinterp_cases import ReducedRank
from test_own_model import NormalCrossing, normal_crossing_data

import llc
from llc.config import IN_MEMORY_MODULE, MODULE_MIN_WARMUP, RunConfig, build_config
from llc.errors import ConfigError
from llc.run.localization import STRONG_GAMMA, WEAK_GAMMA


def module_config(**values: object) -> RunConfig:
    return RunConfig.model_validate({"problem": "module", **values}, context={IN_MEMORY_MODULE: True})


@pytest.mark.parametrize("sampler", ["sgld", "sghmc", "hmc", "mclmc"])
def test_a_module_problem_warms_up_searches_its_step_and_decides_gamma_by_default(sampler):
    config = module_config(sampler=sampler)
    assert config.warmup == MODULE_MIN_WARMUP and config.gamma == "auto"
    searches = sampler in ("sgld", "sghmc")
    assert config.step_size_auto == searches
    assert (config.friction == "auto") == (sampler == "sghmc")
    assert module_config(sampler=sampler, steps=5000).warmup == 1000  # a fifth of the steps


def test_values_given_win_over_the_module_defaults():
    config = module_config(sampler="sgld", warmup=0, gamma=3, step_size=1e-5)
    assert (config.warmup, config.gamma, config.step_size) == (0, 3.0, 1e-5)
    assert module_config(sampler="sgld", warmup=100).step_size_auto  # a warm-up given still searches


def test_the_built_in_problems_keep_their_defaults_and_refuse_gamma_auto():
    mlp = build_config(None, {"widths": (8,)})
    rrr = build_config(None, {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "steps": 1000})
    assert (mlp.gamma, mlp.warmup, rrr.gamma, rrr.warmup, rrr.step_size) == (100.0, 0, 1.0, 0, None)
    with pytest.raises(ConfigError, match="gamma=auto is decided from your own model's w"):
        build_config(None, {"widths": (8,), "gamma": "auto"})


def short(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> dict:
    return llc.estimate(model, data, sampler="sgld", chains=2, steps=20, warmup=0, threads=1).metrics


def test_gamma_is_weak_at_a_minimum_and_strong_at_a_checkpoint_mid_training():
    at_minimum = short(NormalCrossing([1, 2]), normal_crossing_data())  # the gradient at w* = 0 is 0
    assert at_minimum["gamma_auto"] == WEAK_GAMMA
    assert at_minimum["gamma_reason"].startswith("w* is a minimum")

    torch.manual_seed(0)
    x = torch.randn(500, 4)
    y = x @ torch.randn(4, 3)
    model = ReducedRank(4, 2, 3)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(20):  # far from converged
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()
    mid_training = short(model, (x, y))
    assert mid_training["gamma_auto"] == STRONG_GAMMA
    assert mid_training["gamma_reason"].startswith("w* is not a minimum")


def test_an_explicit_gamma_is_used_and_not_reported_as_decided():
    metrics = llc.estimate(
        NormalCrossing([1, 2]), normal_crossing_data(), chains=2, steps=20, warmup=0, gamma=5.0, threads=1
    ).metrics
    assert "gamma_auto" not in metrics and "gamma_reason" not in metrics


def test_a_nearly_converged_w_star_counts_as_a_minimum_and_a_checkpoint_mid_training_does_not():
    """The built-in dln problem's ERM point at seed 2 (d = 33) bounds a shift of 0.285 and reads -2.2%
    at γ = 1 where γ = 100 reads -31% (the localized LLC); 20 Adam steps into training bound 1.6e4."""
    from llc.run.localization import decide

    w_star = torch.zeros(33)
    direction = torch.nn.functional.normalize(torch.ones(33), dim=0)
    for shift, gamma in [(0.285, WEAK_GAMMA), (0.8, WEAK_GAMMA), (0.9, STRONG_GAMMA), (1.6e4, STRONG_GAMMA)]:
        decided = decide(direction * shift**0.5, w_star, nbeta=1.0)
        assert decided.gamma == gamma and decided.gradient_shift == pytest.approx(shift), decided.reason
