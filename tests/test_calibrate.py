"""`llc calibrate`: a grid of short chains as one sweep, a figure, and a recommendation that works."""

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llc.cli import app
from llc.config import build_config
from llc.run.experiment import run_llc
from llc.sweeps.calibrate import Recommendation, recommend, step_schedule, write_recommendation
from llc.sweeps.plan import plan_sweep

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
    settings = yaml.safe_load(recommended.read_text())
    assert settings["sampler"] == "sgld" and settings["step_size"] in (1e-4, 2e-4)
    assert settings["preset"] == "quick" and settings["steps"] == 3000 and settings["gamma"] == 1.0
    assert f"# use as is: llc run --config {recommended}" in recommended.read_text()
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(recommended), "--set", "steps=6000"])
    assert shown.exit_code == 0, shown.output
    config = build_config(settings.pop("preset"), {**settings, "steps": 6000})
    assert f"run_id: {config.run_id}" in shown.stdout
    metrics = run_llc(config, tmp_path).metrics
    assert abs(metrics["llc_rel_error"]) < 0.15, metrics


def _recommend(tmp_path: Path, cell, preset: str | None) -> Path:
    """recommended.yaml for `cell` as the recommended cell of an SGLD calibration (its run directory holds
    its config.json only)."""
    run_dir = tmp_path / cell.run_id
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps(cell.normalized()))
    row = _row(1e-4, 8.0, run_dir=str(run_dir))
    return write_recommendation(tmp_path, "sgld", preset, Recommendation({"step_size": 1e-4}, "why", row))


@pytest.mark.parametrize("preset", ["quick", None])
def test_recommended_yaml_reproduces_the_recommended_cell_as_a_config_and_as_a_study_base(tmp_path, preset):
    """Everything the step was tuned under comes along: `llc run --config` and a study's `base: FILE`
    rebuild the recommended cell's config exactly (the same run_id, so the same cached result)."""
    keys = {"problem": "rrr", "widths": (5, 3, 5), "true_rank": 1, "sampler": "sgld", "steps": 2000}
    cell = build_config(preset, {**keys, "warmup": 100, "eval_every": 50, "step_size": 1e-4})
    written = _recommend(tmp_path, cell, preset)
    settings = yaml.safe_load(written.read_text())
    for key in ("problem", "widths", "true_rank", "n_data", "batch_size", "steps", "gamma", "nbeta"):
        assert key in settings, key
    assert "preset" in settings and settings["preset"] == preset
    shown = CliRunner().invoke(app, ["config", "show", "--config", str(written)])
    assert shown.exit_code == 0 and f"run_id: {cell.run_id}" in shown.stdout, shown.output
    study = tmp_path / "study.yaml"
    study.write_text("base: recommended.yaml\nseeds: [0]\n")
    (planned,) = plan_sweep(study).cells
    assert planned.load_config().run_id == cell.run_id


def test_a_config_file_that_is_no_mapping_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- step_size\n")
    result = CliRunner().invoke(app, ["run", "--config", str(bad)])
    assert result.exit_code == 2 and "expected a mapping of keys" in result.output
    assert "Traceback" not in result.output


def test_calibration_lengthens_its_chains_only_when_none_are_given():
    assert step_schedule(None) == [1000, 2000, 4000]
    assert step_schedule(3000) == [3000]


def test_a_recommendation_from_a_cell_on_all_its_points_leaves_batch_size_unset_and_rebuilds_that_cell(
    tmp_path, monkeypatch
):
    """Your own model's SGLD with no batch_size steps on all its points (up to 1,024): config.json shows
    batch_size 256 beside full_batch_up_to, and recommended.yaml must not turn that into minibatches."""
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    keys = {"problem": "module", "model": "own_model_factories:classifier", "loss": "cross_entropy"}
    keys |= {"data": "own_model_factories:classification_data", "sampler": "sgld", "step_size": 1e-4}
    cell = build_config(None, keys)
    assert cell.full_batch_default and cell.normalized()["batch_size"] == 256
    settings = yaml.safe_load(_recommend(tmp_path, cell, None).read_text())
    assert "batch_size" not in settings, settings
    rebuilt = build_config(settings.pop("preset"), settings)
    assert rebuilt.full_batch_default and rebuilt.run_id == cell.run_id
