"""`llc calibrate`: a grid of short chains as one sweep, a figure, and a recommendation that works."""

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llc.cli import app
from llc.config import build_config
from llc.run.experiment import run_llc
from llc.sweeps.calibrate import recommend

RRR = ["--set", "problem=rrr", "--set", "widths=[5,3,5]", "--set", "true_rank=1", "--set", "chains=4"]


def _row(step: float, llc: float, **extra) -> dict:
    return {"status": "ok", "trusted": True, "chains_diverged": 0, "r_hat": 1.01, "ess_bulk": 100.0,
            "step_size": step, "llc_mean": llc, **extra}  # fmt: skip


def test_the_recommendation_is_the_largest_healthy_step_on_the_plateau():
    rows = [
        _row(1e-5, 7.6), _row(3e-5, 8.0), _row(1e-4, 8.3),  # a plateau: neighbours within 10%
        _row(3e-4, 11.0),  # biased: 33% above its smaller neighbour
        _row(1e-3, 40.0, trusted=False, chains_diverged=5),  # not healthy
    ]  # fmt: skip
    rec = recommend(rows, ["step_size"])
    assert rec.overrides == {"step_size": 1e-4} and "agrees within 10%" in rec.reason
    nothing = recommend([_row(1e-4, 5.0), _row(3e-4, 9.0)], ["step_size"])
    assert nothing.overrides == {} and "widen the grid" in nothing.reason


@pytest.mark.usefixtures("prefect_server")
def test_calibrate_writes_a_figure_and_a_recommendation_that_then_estimates_lambda(tmp_path):
    args = ["calibrate", "--sampler", "sgld", "--runs-dir", str(tmp_path), *RRR]
    # Weak localization (γ = 1, rrr's default) mixes slowly: the chains need a few thousand steps.
    grid = ["--set", "steps=3000", "--step-sizes", "5e-5,1e-4,2e-4,3e-3"]
    result = CliRunner().invoke(app, [*args, *grid])
    assert result.exit_code == 0, result.output
    figure, recommended = (Path(line) for line in result.stdout.strip().splitlines()[-2:])
    assert figure.name == "calibration.png" and figure.stat().st_size > 10_000
    assert "recommendation: step_size=" in result.output
    overrides = yaml.safe_load(recommended.read_text())
    assert overrides["sampler"] == "sgld" and overrides["step_size"] in (1e-4, 2e-4)
    assert "# llc run --sampler sgld --set step_size=" in recommended.read_text()
    config = build_config(
        "quick", {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "steps": 3000, **overrides}
    )
    metrics = run_llc(config, tmp_path).metrics
    assert abs(metrics["llc_rel_error"]) < 0.15, metrics
