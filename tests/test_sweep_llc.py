"""The LLC experiment end to end through the sweep flow: a family's cells share one ERM, tables and plots."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from sweep_probe import rows_by_cell
from typer.testing import CliRunner

from llc.cells.execute import ensure_erm
from llc.cli import app
from llc.config import build_config
from llc.problems.truth import rrr_learning_coefficient
from llc.run.experiment import LLCExperiment
from llc.rundir import RunDir
from llc.sweeps.flow import sweep

TINY = {"n_data": 200, "erm_steps": 30, "chains": 2, "steps": 40, "warmup": 10, "batch_size": 50}
STUDY = {
    "name": "tiny",
    "preset": "quick",
    "base": TINY,
    "problems": [{"name": "rrr", "overrides": {"widths": [3, 2, 3], "true_rank": 1}}],
    "samplers": [{"name": "sgld"}, {"name": "mclmc"}],
    "execution": {"max_parallel": 2},
}


@pytest.fixture(scope="module")
def llc_sweep(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    runs = tmp_path_factory.mktemp("llc") / "runs"
    state = sweep(study=STUDY, runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    return runs, state.result()


def test_llc_cells_estimate_against_the_known_truth_and_seal_their_runs(
    llc_sweep: tuple[Path, dict[str, Any]],
) -> None:
    runs, result = llc_sweep
    rows = rows_by_cell(result["results"])
    assert sorted(rows) == ["rrr-mclmc-s0", "rrr-sgld-s0"]
    truth = rrr_learning_coefficient(3, 2, 3, 1)
    for row in rows.values():
        assert row["status"] == "ok" and row["cached"] is False
        assert math.isfinite(row["llc_mean"]) and row["llc_se"] > 0 and row["grad_evals"] > 0
        assert row["llc_true"] == truth
        assert row["llc_rel_error"] == pytest.approx((row["llc_mean"] - truth) / truth)
        assert RunDir(runs, row["run_id"]).is_complete()
        assert (Path(row["run_dir"]) / f"{row['sampler']}.nc").exists()
    (family,) = {row["family_id"] for row in rows.values()}
    assert [p.name for p in (runs / "families").iterdir()] == [family]
    assert (runs / "families" / family / "erm.pt").exists()


def test_status_and_plot_sweep_summarize_the_sweep(llc_sweep: tuple[Path, dict[str, Any]]) -> None:
    runs, result = llc_sweep
    status = CliRunner().invoke(app, ["sweep", "status", "tiny", "--runs-dir", str(runs)])
    assert status.exit_code == 0, status.output
    assert "## LLC by sampler" in status.stdout and "| rrr | mclmc | 1 |" in status.stdout
    plotted = CliRunner().invoke(app, ["plot-sweep", result["sweep_id"], "--runs-dir", str(runs)])
    assert plotted.exit_code == 0, plotted.output
    paths = [Path(line) for line in plotted.stdout.split()]
    assert [p.name for p in paths] == ["llc_by_sampler.png", "durations.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)
    unknown = CliRunner().invoke(app, ["sweep", "status", "nope", "--runs-dir", str(runs)])
    assert unknown.exit_code == 2 and "tiny-" in unknown.output


def test_cells_of_one_family_racing_train_its_erm_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = build_config("quick", {**TINY, "problem": "rrr", "widths": [3, 2, 3], "true_rank": 1})
    trainings: list[int] = []
    original = LLCExperiment._erm

    def slow_erm(self: LLCExperiment, *args: Any) -> Any:
        trainings.append(1)
        time.sleep(0.3)  # long enough for the other cell to arrive while this one trains
        return original(self, *args)

    monkeypatch.setattr(LLCExperiment, "_erm", slow_erm)
    cells = [threading.Thread(target=ensure_erm, args=(config, tmp_path)) for _ in range(3)]
    for cell in cells:
        cell.start()
    for cell in cells:
        cell.join()
    assert trainings == [1]
    assert (tmp_path / "families" / config.family_id / "erm.pt").exists()
