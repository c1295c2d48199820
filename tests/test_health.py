"""Runs that cannot be trusted say so: diverged chains, a too-large step, an unconverged ERM."""

import json
from pathlib import Path

import numpy as np
import torch
from typer.testing import CliRunner

from llc.cells.cell import lone_cell
from llc.cells.record import CellRecord
from llc.cli import app
from llc.config import build_config
from llc.model.network import MLP
from llc.problems import build_problem
from llc.problems.optimum import best_linear_loss
from llc.run.diagnostics import spread, summarize, trend
from llc.run.erm import train
from llc.run.experiment import run_llc
from llc.run.health import FIXES, MALA_FLOOR, assess
from llc.sweeps.results import result_rows

RRR = {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "n_data": 500, "chains": 4, "steps": 100}


def test_the_best_linear_loss_is_least_squares_for_one_layer_and_a_floor_for_a_bottleneck():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(5, 4, generator=gen, dtype=torch.float64) + 0.1 * torch.randn(400, 4, generator=gen)
    exact = torch.linalg.lstsq(x, y).solution
    full = float((x @ exact - y).square().sum(dim=1).mean())
    assert abs(best_linear_loss(MLP((5, 4), "identity", bias=False), x, y) - full) < 1e-10
    # Through a width-2 bottleneck the floor is higher, and no rank-2 map goes below it.
    best = best_linear_loss(MLP((5, 2, 4), "identity", bias=False), x, y)
    assert best > full * 1.5
    # Least squares projected on any 2-dimensional subspace of outputs is a rank-2 map: none beats it.
    for _ in range(50):
        q, _ = torch.linalg.qr(torch.randn(4, 2, generator=gen, dtype=torch.float64))
        assert float((x @ exact @ q @ q.T - y).square().sum(dim=1).mean()) >= best - 1e-12


def test_erm_on_the_built_in_linear_networks_reaches_the_closed_form_optimum():
    for case in ({"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1},
                 {"problem": "dln", "widths": (4, 3, 3, 4), "true_rank": 1}):  # fmt: skip
        config = build_config("full", {**case, "erm_steps": 2000})
        problem = build_problem(config)
        _, loss0 = train(problem, config.erm_steps, config.erm_lr, config.seed)
        best = best_linear_loss(problem.model, problem.x, problem.y)
        assert 0 <= config.resolved_nbeta * (loss0 - best) < 0.05 * problem.llc_true, (case, loss0, best)


def test_a_run_whose_erm_stopped_short_is_flagged(tmp_path):
    metrics = run_llc(build_config(None, {**RRR, "erm_steps": 3, "sampler": "hmc"}), tmp_path).metrics
    assert "erm_not_converged" in metrics["flags"] and metrics["trusted"] is False
    assert metrics["erm_gap_llc"] > 1.0
    healthy = run_llc(build_config(None, {**RRR, "erm_steps": 2000, "sampler": "hmc"}), tmp_path).metrics
    assert "erm_not_converged" not in healthy["flags"] and healthy["erm_gap_llc"] < 0.1


def test_a_run_whose_chains_diverged_is_flagged_in_metrics_and_results(tmp_path):
    config = build_config(None, {**RRR, "sampler": "sgld", "step_size": 0.05, "eval_every": 50})
    result = run_llc(config, tmp_path)
    m = result.metrics
    assert m["chains_diverged"] >= 3 and m["trusted"] is False
    assert {"no_healthy_chain", "most_chains_diverged"} & set(m["flags"])
    assert json.loads((result.path / "metrics.json").read_text())["flags"] == m["flags"]
    cell = lone_cell(config)
    record = CellRecord.ok(cell, str(result.path), m, duration_s=1.0, cached=False)
    (row,) = result_rows("s", [cell], {cell.name: record})
    assert row["trusted"] is False and row["flags"] == ";".join(m["flags"])


def test_a_step_too_large_for_the_curvature_is_flagged_by_its_mala_acceptance(tmp_path):
    config = build_config(
        None, {**RRR, "sampler": "sgld", "step_size": 2e-3, "batch_size": 500, "eval_every": 20, "gamma": 1}
    )
    m = run_llc(config, tmp_path).metrics
    assert m["chains_diverged"] == 0, m
    assert m["mala_acceptance_mean"] < MALA_FLOOR and "mala_acceptance_low" in m["flags"]
    small = run_llc(config.model_copy(update={"step_size": 2e-5}), tmp_path).metrics
    assert small["mala_acceptance_mean"] > 0.9 and "mala_acceptance_low" not in small["flags"]


def test_llc_run_exits_1_saying_what_to_change_when_no_healthy_chain_is_left(tmp_path):
    args = ["run", "--sampler", "sgld", "--runs-dir", str(tmp_path), "--preset", "quick"]
    for key, value in {**RRR, "widths": "[5,3,5]", "step_size": 1.0}.items():
        args += ["--set", f"{key}={value}"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "no_healthy_chain" in result.output and "lower step_size" in result.output
    run_dir = Path(result.stdout.strip().splitlines()[0])
    assert json.loads((run_dir / "metrics.json").read_text())["chains_used"] == 0


def test_a_known_lambda_run_under_strong_localization_carries_a_note_not_a_relative_error(tmp_path):
    strong = run_llc(build_config(None, {**RRR, "sampler": "hmc", "gamma": 100}), tmp_path).metrics
    assert "llc_rel_error" not in strong and "localized LLC" in strong["llc_note"]
    weak = run_llc(build_config(None, {**RRR, "sampler": "hmc", "gamma": 1}), tmp_path).metrics
    assert "llc_note" not in weak and weak["llc_rel_error"] is not None


def test_chains_that_disagree_are_flagged():
    def flags(r_hat: float) -> list[str]:
        metrics = {"chains_used": 8, "chains_diverged": 0, "r_hat": r_hat, "llc_mean": 5.0}
        return [f.name for f in assess(metrics, 8, "sgld")]

    assert flags(1.37) == ["chains_disagree"] and flags(1.02) == []


def test_hmc_at_a_low_acceptance_whose_chains_mixed_is_trusted_and_one_whose_chains_disagree_is_not():
    # The Metropolis step keeps HMC exact at any acceptance (on benchmarks/dln_scale.py's networks HMC at
    # 0.29-0.30 read -5.5% to +0.2%); what a low acceptance costs is mixing, which R-hat sees.
    mixed = {
        "chains_used": 8,
        "chains_diverged": 0,
        "r_hat": 1.01,
        "llc_mean": 600.0,
        "acceptance_rate_mean": 0.29,
    }
    assert assess(mixed, 8, "hmc") == []
    assert [f.name for f in assess({**mixed, "r_hat": 1.19}, 8, "hmc")] == ["chains_disagree"]


def test_chains_the_minibatch_noise_heats_are_flagged_with_the_heating(tmp_path):
    """SGHMC's heating is η·tr(V)/(4α): a low friction at a large step on tiny minibatches is flagged,
    the same step on all points has none, and a higher friction has 30 times less."""

    def run(**extra: float) -> dict:
        config = build_config(None, {**RRR, "steps": 200, "sampler": "sghmc", "step_size": 3e-5, **extra})
        return run_llc(config, tmp_path).metrics

    hot = run(friction=0.01, batch_size=16)
    assert hot["minibatch_heating"] > 0.1 * hot["llc_mean"] and "minibatch_noise_heats" in hot["flags"]
    assert run(friction=0.01, batch_size=500)["minibatch_heating"] == 0.0
    cool = run(friction=0.3, batch_size=16)
    assert cool["minibatch_heating"] < hot["minibatch_heating"] / 10
    assert "minibatch_noise_heats" not in cool["flags"]


def _flags_of(
    llc: np.ndarray, w_proj: np.ndarray | None = None, gamma: float = 1.0, d: int = 100
) -> list[str]:
    """The flags a trace raises through a run's path: its summary, trend and spread, then assess."""
    w_proj = np.zeros((*llc.shape, 0)) if w_proj is None else w_proj
    metrics = {**summarize(llc), **trend(llc), **spread(llc, w_proj, gamma), "chains_diverged": 0, "d": d}
    return [f.name for f in assess(metrics, llc.shape[0], "sgld")]


def _settled(rng: np.random.Generator, level: float = 10.0, chains: int = 8, draws: int = 2000) -> np.ndarray:
    return level + rng.normal(0.0, 2.0, size=(chains, draws))


def test_an_estimate_still_rising_through_the_run_is_flagged_and_a_settled_one_is_not():
    rng = np.random.default_rng(0)
    # Half a standard deviation per quarter, lost in the noise draw by draw: +20% from quarter 2 to 4.
    rising = _settled(rng) + np.linspace(8.0, 12.0, 2000)[None, :] - 10.0
    assert "still_rising" in _flags_of(rising)
    for seed in range(5):
        assert _flags_of(_settled(np.random.default_rng(seed))) == []
    # Rising by a significant but small amount (2%) is within what a run of this length may keep.
    slight = _settled(rng) + np.linspace(-0.2, 0.2, 2000)[None, :]
    assert "still_rising" not in _flags_of(slight)


def test_chains_still_diffusing_far_inside_the_localization_radius_are_flagged_as_leaving_soft_directions():
    rng = np.random.default_rng(1)
    llc = _settled(rng)
    # A free random walk of step 1e-3 (the distance a tiny SGLD step covers in 2,000 steps): at 1/1000 of
    # the localization's 1/gamma = 1, still growing.
    walking = np.cumsum(rng.normal(0.0, 1e-3, size=(8, 2000, 3)), axis=1)
    assert _flags_of(llc, walking) == ["soft_directions_unfilled"]
    # As close to w*, but settled (a regular model's stiff directions): filled.
    assert _flags_of(llc, rng.normal(0.0, 0.03, size=(8, 2000, 3))) == []
    # Still spreading, but out to a good part of the localization radius: the soft directions are reached.
    assert _flags_of(llc, 10 * walking, gamma=1.0) == []


def test_soft_directions_count_as_unfilled_under_2_percent_of_the_localization_radius():
    # SGLD on the DLNs of the trust table: still spreading at 0.012-0.019, 15-32% low (trusted at a floor of
    # 0.01); dln [10,20,20,10] at 0.026 and 0.036, -7% and -5%.
    assert [
        f.name for f in assess({"chains_used": 8, "spread_gamma": 0.0165, "spread_growth": 1.34}, 8, "sgld")
    ] == ["soft_directions_unfilled"]
    assert assess({"chains_used": 8, "spread_gamma": 0.0258, "spread_growth": 2.01}, 8, "sgld") == []


def test_unfilled_soft_directions_name_the_samplers_to_run_instead():
    # SGLD's spread on a deep linear network (dln_scale, 947 parameters): more SGLD steps barely help there.
    (flag,) = assess({"chains_used": 8, "spread_gamma": 0.001, "spread_growth": 2.0}, 8, "sgld")
    assert flag.name == "soft_directions_unfilled"
    assert "sampler=sghmc" in flag.reason and "sampler=hmc" in flag.reason
    assert "sampler=sghmc" in FIXES[flag.name] and "hmc" in FIXES[flag.name]


def test_chains_whose_loss_never_rose_above_l0_are_flagged_as_never_leaving_w_star():
    rng = np.random.default_rng(2)
    # Minibatch noise around L0 and nothing else: the estimate is 0 within its standard error.
    assert _flags_of(rng.normal(0.001, 0.05, size=(8, 2000))) == ["never_left_w_star"]
    assert "never_left_w_star" not in _flags_of(_settled(rng, level=0.5))


def test_an_estimate_above_d_half_is_flagged_and_one_a_few_percent_above_it_is_not():
    rng = np.random.default_rng(4)
    # Regular models: SGLD reads a few % above d/2 and is within 10%; three times d/2 is the sampler's heat.
    assert _flags_of(_settled(rng, level=10.5), d=20) == []
    assert _flags_of(_settled(rng, level=30.0), d=20) == ["llc_above_d_half"]
