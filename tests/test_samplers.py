"""Sampler behaviour: divergence handling, vectorized == sequential in distribution, adaptation."""

import json
import math

import numpy as np
import pytest
import torch

from llc.config import build_config
from llc.model.network import MLP
from llc.model.posterior import LocalizedPosterior
from llc.problems import build_problem
from llc.run.erm import train
from llc.run.experiment import run_llc
from llc.samplers.driver import mala_acceptance, sample

RRR = {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "n_data": 2000, "noise_scale": 0.1,
       "erm_steps": 1500, "gamma": 1.0, "projections": 2}  # fmt: skip


def _posterior(config):
    problem = build_problem(config)
    w_star, loss0 = train(problem, config.erm_steps, config.erm_lr, config.seed)
    batch = config.batch_size if config.sampler in ("sgld", "sghmc") else None
    return LocalizedPosterior(
        problem.model, problem.x, problem.y, w_star, config.resolved_nbeta, config.gamma, batch
    ), loss0


def _estimate(config):
    posterior, loss0 = _posterior(config)
    trace = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(config.seed + 17))
    from llc.run.diagnostics import summarize

    return summarize(trace.llc), trace


def test_vectorized_and_sequential_agree_within_standard_errors():
    common = {**RRR, "sampler": "sgld", "chains": 4, "steps": 1500, "batch_size": 2000, "step_size": 1e-4}
    vec, _ = _estimate(build_config(None, {**common, "gpu_mode": "vectorized"}))
    seq, _ = _estimate(build_config(None, {**common, "gpu_mode": "sequential"}))
    tolerance = 4 * math.hypot(vec["llc_se"], seq["llc_se"])
    assert abs(vec["llc_mean"] - seq["llc_mean"]) < tolerance, (vec, seq)
    assert vec["llc_mean"] != seq["llc_mean"]  # really two different computations


def test_a_diverging_chain_is_reported_and_the_run_completes(tmp_path, monkeypatch):
    """Chain 2's gradient becomes non-finite after 40 steps; the others finish and give the estimate."""
    original = MLP.loss_and_grad
    calls = {"n": 0}

    def poisoned(self, params, x, y):
        calls["n"] += 1
        loss, grad = original(self, params, x, y)
        if calls["n"] > 40 and params.shape[0] == 4:
            grad[2] = math.inf
        return loss, grad

    monkeypatch.setattr(MLP, "loss_and_grad", poisoned)
    config = build_config(None, {**RRR, "sampler": "sgld", "chains": 4, "steps": 300, "erm_steps": 100})
    result = run_llc(config, tmp_path)
    metrics = result.metrics
    assert metrics["chains_diverged"] == 1 and metrics["diverged_chains"] == [2]
    assert metrics["chains_used"] == 3 and math.isfinite(metrics["llc_mean"])
    assert json.loads((result.path / "metrics.json").read_text())["diverged_chains"] == [2]
    assert (result.path / "complete.json").exists()


def test_all_chains_diverging_still_writes_a_readable_result(tmp_path):
    config = build_config(
        None, {**RRR, "sampler": "sgld", "chains": 2, "steps": 200, "step_size": 10.0, "erm_steps": 50}
    )
    metrics = run_llc(config, tmp_path).metrics
    assert metrics["chains_diverged"] == 2 and metrics["llc_mean"] is None


def test_hmc_tunes_its_step_size_to_the_target_acceptance():
    config = build_config(None, {**RRR, "sampler": "hmc", "chains": 4, "steps": 300, "warmup": 300,
                                 "n_leapfrog": 5, "target_accept": 0.75})  # fmt: skip
    _, trace = _estimate(config)
    acceptance = np.nanmean(trace.stats["acceptance_rate"])
    assert 0.6 < acceptance < 0.92, acceptance
    assert np.allclose(trace.stats["step_size"][:, 0], trace.stats["step_size"][:, -1])  # fixed after warm-up


def test_mclmc_tunes_energy_error_towards_its_target():
    config = build_config(None, {**RRR, "sampler": "mclmc", "chains": 4, "steps": 300, "warmup": 400})
    _, trace = _estimate(config)
    dim = 30
    var_per_dim = np.nanvar(trace.stats["energy_change"]) / dim
    assert 5e-5 < var_per_dim < 5e-3, var_per_dim


def test_thinning_and_evaluation_set_the_trace_shapes():
    config = build_config(
        None, {**RRR, "sampler": "sgld", "chains": 3, "steps": 100, "thin": 4, "eval_every": 25}
    )
    _, trace = _estimate(config)
    assert trace.llc.shape == (3, 25) and trace.w_proj.shape == (3, 25, 2)
    assert trace.eval_loss is not None and trace.eval_loss.shape == (3, 4)
    assert trace.mala_acceptance is not None and np.all(
        (trace.mala_acceptance >= 0) & (trace.mala_acceptance <= 1)
    )


@pytest.mark.parametrize(("step", "healthy"), [(1e-5, True), (1e-2, False)])
def test_mala_check_separates_healthy_from_too_large_step_sizes(step, healthy):
    config = build_config(None, {**RRR, "sampler": "sgld", "chains": 4})
    posterior, _ = _posterior(config)
    w = posterior.w_star.expand(4, -1).clone()
    acceptance = mala_acceptance(posterior, w, step, torch.Generator().manual_seed(0)).mean().item()
    assert (acceptance > 0.9) == healthy, acceptance


@pytest.mark.parametrize("precond", ["rmsprop", "adam"])
def test_preconditioned_sgld_runs_and_stays_finite(precond):
    config = build_config(
        None, {**RRR, "sampler": "sgld", "precond": precond, "chains": 2, "steps": 300, "step_size": 1e-3}
    )
    summary, trace = _estimate(config)
    assert (trace.diverged_at == -1).all() and summary["llc_mean"] > 0


class _Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("sampler", "warmup", "step_size"),
    [("sgld", 50, None), ("hmc", 50, None), ("mclmc", 50, None), ("sghmc", 50, None),
     ("hmc", 150, None), ("mclmc", 150, None), ("sgld", 150, "auto")],
)  # fmt: skip
def test_an_interrupted_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    sampler, warmup, step_size, tmp_path
):
    """Interrupt at step 100 of 200 (after warm-up, or in it: the tuning's state is in the kernel's
    state), resume: only the rest is computed, and identically."""
    from llc.samplers.checkpoint import Checkpointing

    chosen = {"step_size": step_size} if step_size else {}
    config = build_config(
        None,
        {**RRR, "sampler": sampler, "chains": 3, "steps": 200 - warmup, "warmup": warmup, "n_leapfrog": 3,
         **chosen},
    )  # fmt: skip
    posterior, loss0 = _posterior(config)
    reference = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(5))

    def stop_at_100(done, total):
        if done == 100:  # progress reports every 50 steps; checkpoints every step
            raise _Interrupted

    checkpoint = Checkpointing(tmp_path / "ckpt.pt", every_s=0.0)
    with pytest.raises(_Interrupted):
        sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(5), stop_at_100, checkpoint)
    assert checkpoint.path.exists()
    from llc.samplers.build import kernel_class  # count the steps the resumed run really takes

    calls = {"n": 0}
    # sgld and sghmc run their chains in blocks (3 chains: one block): count block steps.
    method = "_step_block" if sampler in ("sgld", "sghmc") else "step"
    original = getattr(kernel_class(sampler), method)

    def counting(self, *args):
        calls["n"] += 1
        return original(self, *args)

    setattr(kernel_class(sampler), method, counting)
    try:
        resumed = sample(
            config.sampling, posterior, loss0, torch.Generator().manual_seed(5), None, checkpoint
        )
    finally:
        setattr(kernel_class(sampler), method, original)
    assert calls["n"] == 200 - 100
    np.testing.assert_array_equal(resumed.llc, reference.llc)
    np.testing.assert_array_equal(resumed.w_proj, reference.w_proj)


def test_run_llc_keeps_the_checkpoint_until_the_result_is_sealed(tmp_path):
    from llc.rundir import RunDir

    config = build_config(None, {**RRR, "sampler": "sgld", "chains": 2, "steps": 100, "erm_steps": 50})
    run_dir = RunDir(tmp_path, config.run_id)
    run_dir.prepare()
    run_dir.checkpoint.write_bytes(b"not a checkpoint")  # unreadable: sampling starts over
    (run_dir.path / "stale.txt").write_text("from a failed attempt")
    result = run_llc(config, tmp_path, checkpoint_every_s=0.0)
    assert result.metrics["chains_used"] == 2
    assert not run_dir.checkpoint.exists() and not (run_dir.path / "stale.txt").exists()
    assert run_dir.is_complete()


@pytest.mark.slow
def test_compiled_sgld_agrees_with_eager():
    """compile=true compiles SGLD's gradient and estimates the same LLC as eager."""
    common = {**RRR, "sampler": "sgld", "chains": 4, "steps": 1500, "batch_size": 256, "step_size": 1e-4}
    eager, _ = _estimate(build_config(None, common))
    compiled, trace = _estimate(build_config(None, {**common, "compile": True}))
    assert (trace.diverged_at == -1).all()
    tolerance = 4 * math.hypot(eager["llc_se"], compiled["llc_se"])
    assert abs(eager["llc_mean"] - compiled["llc_mean"]) < tolerance, (eager, compiled)


MLP_SMALL = {"problem": "mlp", "in_dim": 4, "widths": (8, 8), "teacher_widths": (4,), "n_data": 500,
             "erm_steps": 50, "batch_size": 32}  # fmt: skip


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_minibatch_samplers_give_the_same_draws_on_one_core_and_on_two(sampler, compiled):
    """Chains advance in blocks with their own random streams (samplers/blocks.py); spreading the blocks
    over cores must not change a single number, nor may it leave any chain out. Compiled, 10 chains
    make blocks of 4, 4 and 2 chains, which two cores step at once."""
    chains = 10 if compiled else 34
    base = {**MLP_SMALL, "sampler": sampler, "chains": chains, "steps": 30, "warmup": 5, "compile": compiled}
    traces = []
    for threads in (1, 2):
        config = build_config("quick", {**base, "threads": threads})
        posterior, loss0 = _posterior(config)
        traces.append(sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(3)))
    one, two = traces
    assert np.isfinite(one.loss).all() and one.loss.shape == (chains, 30)
    np.testing.assert_array_equal(one.loss, two.loss)
    np.testing.assert_array_equal(one.w_proj, two.w_proj)
    # Each stream of chains has its own numbers: no two chains share their draws.
    assert len({tuple(row) for row in one.loss.round(7)}) == chains


@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_a_compiled_step_draws_the_eager_numbers_and_lands_where_eager_does(sampler):
    """compile=true runs each block's step as one compiled call; the random streams are those of the
    eager run, so over a few steps the two differ by float rounding only."""
    base = {**MLP_SMALL, "sampler": sampler, "chains": 8, "steps": 20, "warmup": 0}
    traces = []
    for compiled in (False, True):
        config = build_config("quick", {**base, "compile": compiled})
        posterior, loss0 = _posterior(config)
        traces.append(sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(4)))
    eager, compiled_trace = traces
    assert compiled_trace.compiled and not eager.compiled
    np.testing.assert_allclose(compiled_trace.loss, eager.loss, rtol=1e-4)
    np.testing.assert_allclose(compiled_trace.w_proj, eager.w_proj, rtol=1e-3, atol=1e-5)
    assert not np.array_equal(eager.loss[0], eager.loss[4])  # the 2 streams differ


def test_several_steps_per_call_record_what_one_step_per_call_records(monkeypatch):
    """Blocked kernels run up to 50 steps per call, each core its own blocks (driver._stride_end);
    losses, projections, thinning, warm-up and evaluations come out as with one step per call."""
    from llc.samplers import driver

    base = {**MLP_SMALL, "sampler": "sgld", "chains": 20, "steps": 120, "warmup": 7, "thin": 3,
            "eval_every": 10, "projections": 3}  # fmt: skip
    config = build_config("quick", base)
    posterior, loss0 = _posterior(config)
    strided = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(6))
    monkeypatch.setattr(driver, "_stride_end", lambda t, total, config, n_evals: t + 1)
    single = sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(6))
    assert strided.loss.shape == (20, 40) and np.isfinite(strided.loss).all()
    np.testing.assert_array_equal(strided.loss, single.loss)
    np.testing.assert_array_equal(strided.w_proj, single.w_proj)
    np.testing.assert_array_equal(strided.eval_loss, single.eval_loss)
    np.testing.assert_array_equal(strided.mala_acceptance, single.mala_acceptance)


def test_compile_auto_compiles_long_runs_of_the_block_samplers_only(monkeypatch):
    """compile=auto (the default) compiles SGLD without a preconditioner and SGHMC on the CPU when eager
    sampling is estimated at a minute or more, and a C++ compiler is there; otherwise it stays eager."""
    from llc.samplers import driver

    config = build_config("quick", {**MLP_SMALL, "sampler": "sgld", "chains": 8})
    posterior, _ = _posterior(config)
    assert config.compile == "auto" and not driver.compiles(config.sampling, posterior)  # seconds of work
    long = config.model_copy(update={"steps": 10_000_000})
    assert driver.compiles(long.sampling, posterior)
    assert driver.compiles(long.model_copy(update={"sampler": "sghmc"}).sampling, posterior)
    for update in ({"sampler": "hmc"}, {"precond": "adam"}, {"gpu_mode": "sequential"}, {"compile": False}):
        assert not driver.compiles(long.model_copy(update=update).sampling, posterior), update
    assert driver.compiles(config.model_copy(update={"compile": True}).sampling, posterior)
    monkeypatch.setattr(driver.shutil, "which", lambda name: None)
    assert not driver.compiles(long.sampling, posterior)  # no C++ compiler: eager


@pytest.mark.parametrize("value", ["auto", True, False])
def test_compile_takes_auto_or_a_boolean(value):
    assert build_config("quick", {"compile": value}).compile == value


def test_compile_refuses_other_values():
    with pytest.raises(ValueError, match="compile"):
        build_config("quick", {"compile": "sometimes"})


def _failing_compile(fn, device):
    def compiled(*args):
        raise RuntimeError("no C++ compiler here")

    return compiled


@pytest.mark.parametrize("sampler", ["sgld", "sghmc"])
def test_compile_auto_falls_back_to_the_eager_run_when_compiling_fails(sampler, monkeypatch, caplog):
    """With compile=auto a step that cannot be compiled is found before any random number is drawn;
    the run goes on eager, with exactly the numbers of a compile=false run, and says so."""
    from llc.samplers import driver, sghmc, sgld

    base = {**MLP_SMALL, "sampler": sampler, "chains": 10, "steps": 20, "warmup": 3}
    eager_config = build_config("quick", {**base, "compile": False})
    posterior, loss0 = _posterior(eager_config)
    eager = sample(eager_config.sampling, posterior, loss0, torch.Generator().manual_seed(8))
    monkeypatch.setattr(driver, "compiles", lambda config, posterior: True)  # auto decides to compile
    monkeypatch.setattr({"sgld": sgld, "sghmc": sghmc}[sampler], "compile_step", _failing_compile)
    auto = sample(build_config("quick", base).sampling, posterior, loss0, torch.Generator().manual_seed(8))
    assert not auto.compiled
    np.testing.assert_array_equal(auto.loss, eager.loss)
    assert "running eager" in caplog.text and "no C++ compiler here" in caplog.text


def test_compile_true_that_cannot_compile_is_an_error_that_says_what_to_do(monkeypatch):
    from llc.samplers import sgld
    from llc.samplers.blocks import CompileFailed

    config = build_config("quick", {**MLP_SMALL, "sampler": "sgld", "chains": 4, "steps": 5, "compile": True})
    posterior, loss0 = _posterior(config)
    monkeypatch.setattr(sgld, "compile_step", _failing_compile)
    with pytest.raises(CompileFailed, match="compile=false"):
        sample(config.sampling, posterior, loss0, torch.Generator().manual_seed(8))
