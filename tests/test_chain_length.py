"""steps=auto: the run extends the same chains until they fill, within a budget; steps given are exact."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from test_samplers import _posterior

import llc.config
from llc.config import AUTO_STEP_BUDGET, IN_MEMORY_MODULE, MODULE_MIN_WARMUP, RunConfig, build_config
from llc.run.chain_length import ChainLength
from llc.run.experiment import run_llc
from llc.samplers.driver import sample
from llc.samplers.trace import Trace

SMALL = {"problem": "rrr", "widths": (4, 2, 3), "true_rank": 1, "n_data": 200, "erm_steps": 50,
         "chains": 2, "warmup": 0, "threads": 1, "projections": 2, "batch_size": 50}  # fmt: skip


@pytest.mark.parametrize(
    "sampler, keys",
    [("sgld", {"step_size": 1e-4, "eval_every": 20, "batch_size": 50}), ("hmc", {"warmup": 20})],
)
def test_an_extended_run_continues_the_same_chains_draw_for_draw(sampler, keys):
    config = build_config(None, {**SMALL, "sampler": sampler, "steps": 100, **keys})
    posterior, loss0 = _posterior(config)
    whole = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(5))
    asked = []

    def more(trace: Trace) -> int:
        asked.append(trace.steps)
        return 40 if trace.steps == 60 else 0

    part = replace(config.sampling, steps=60)
    extended = sample(part, posterior, loss0, torch.Generator().manual_seed(5), more=more)
    assert asked == [60, 100] and extended.steps == whole.steps == 100
    np.testing.assert_array_equal(extended.loss, whole.loss)
    np.testing.assert_array_equal(extended.w_proj, whole.w_proj)
    for name, values in whole.stats.items():
        np.testing.assert_array_equal(extended.stats[name], values)
    if whole.mala_acceptance is not None:
        np.testing.assert_array_equal(extended.mala_acceptance, whole.mala_acceptance)
        np.testing.assert_array_equal(extended.eval_loss, whole.eval_loss)
    assert extended.grad_evals == whole.grad_evals


def synthetic(llc: np.ndarray) -> Trace:
    return Trace(loss=llc, llc=llc, w_proj=np.zeros((*llc.shape, 0)), steps=llc.shape[1])


def test_chains_that_still_rise_double_until_the_budget_and_say_so():
    rng = np.random.default_rng(0)
    rule = ChainLength(budget=4000, gamma=1.0)
    for steps, added in ((1000, 1000), (2000, 2000), (4000, 0)):
        rising = np.linspace(5, 10, steps) + rng.normal(0, 0.1, (8, steps))
        assert rule.more(synthetic(rising)) == added
    assert rule.reason.startswith("budget of 4000 steps spent, still: the estimate moved +")


def test_filled_chains_stop_at_once_and_too_few_effective_draws_do_not():
    rng = np.random.default_rng(0)
    rule = ChainLength(budget=8000, gamma=1.0)
    assert rule.more(synthetic(5 + rng.normal(0, 1, (8, 1000)))) == 0
    assert rule.reason == "filled after 1000 steps"
    walk = 5 + np.cumsum(rng.normal(0, 0.05, (8, 1000)), axis=1) * 0  # constant per chain: no spread
    sticky = walk + np.repeat(rng.normal(0, 1, (8, 10)), 100, axis=1)  # 10 independent values per chain
    assert rule.more(synthetic(sticky)) == 1000
    assert "ESS" in rule.reason and "per chain" in rule.reason


def test_an_estimate_whose_standard_error_is_over_5_percent_of_it_continues_and_says_so():
    rng = np.random.default_rng(0)
    rule = ChainLength(budget=8000, gamma=1.0)
    noisy = 1 + rng.normal(0, 5, (8, 1000))  # independent draws: se 5/sqrt(8000) = 0.056 of the mean 1
    assert rule.more(synthetic(noisy)) == 1000
    assert rule.reason == "extended from 1000 steps: standard error 6% of the estimate"
    assert rule.more(synthetic(1 + rng.normal(0, 5, (8, 2000)))) == 0  # 0.040 of it: done


def test_steps_given_are_sampled_exactly_and_auto_records_its_choice(tmp_path, monkeypatch):
    given = run_llc(build_config(None, {**SMALL, "steps": 50}), tmp_path).metrics
    assert given["steps_chosen"] == 50 and "steps_reason" not in given
    monkeypatch.setattr(llc.config, "AUTO_INITIAL_STEPS", 100)  # a short start keeps the test short
    auto = build_config(None, {**SMALL, "warmup": 40, "steps": "auto"})
    metrics = run_llc(auto, tmp_path).metrics
    assert metrics["steps_chosen"] in [100 * 2**k for k in range(4)]
    assert metrics["steps_reason"].startswith(("filled after", "extended from", "budget of"))
    assert metrics["steps_chosen"] <= AUTO_STEP_BUDGET * 100


def test_your_own_model_and_the_known_lambda_problems_default_to_steps_auto():
    module = RunConfig.model_validate({"problem": "module"}, context={IN_MEMORY_MODULE: True})
    assert (module.steps, module.warmup, module.initial_steps) == ("auto", MODULE_MIN_WARMUP, 1000)
    assert module.step_budget == AUTO_STEP_BUDGET * 1000
    rrr = build_config(None, {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1})
    assert (rrr.steps, rrr.warmup, rrr.step_size) == ("auto", MODULE_MIN_WARMUP, "auto")
    given = build_config(None, {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "steps": 300})
    assert (given.steps, given.warmup, given.step_budget) == (300, 0, 300)  # steps given: as before
    mlp = build_config(None, {"widths": (8,)})
    assert (mlp.steps, mlp.warmup) == (1000, 0)  # the teacher-student MLP keeps its defaults
