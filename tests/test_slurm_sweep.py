"""Whole sweeps on the real SLURM cluster of deployments/slurm: every cell leaves in one job array
sized to the partition, a job shape the cluster refuses fails the sweep before anything is submitted,
and jobs outlive their flow (adopted by a restarted sweep, cancelled by `llc sweep cancel`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import (
    ROOT,
    job_of,
    probe_study,
    sacct,
    sbatch_log,
    slurm_backend_registered,
    slurm_cluster,
    wait_for_state,
)
from typer.testing import CliRunner

from llc.cli import app
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep
from llc.sweeps.results import read_results

__all__ = ["sbatch_log", "slurm_backend_registered", "slurm_cluster"]

pytestmark = [
    pytest.mark.usefixtures("slurm_cluster", "prefect_server", "slurm_backend_registered"),
    pytest.mark.timeout(300),
]

FLOW_SCRIPT = """
import json, sys
from llc.backends import BACKENDS
BACKENDS["slurm"] = "llc.backends.slurm.backend:SlurmBackend"
from llc.sweeps.flow import sweep
sweep(study=json.loads(sys.argv[1]), backend="slurm", runs_dir=sys.argv[2])
"""


def submissions(log: Path) -> list[str]:
    """The sbatch calls that submitted jobs (not `--test-only` checks)."""
    return [line for line in log.read_text().splitlines() if "--test-only" not in line]


def starts(markers: Path, run_id: str) -> int:
    """How many times the probe of a run started (each execution appends a `start` line)."""
    return (markers / f"{run_id}.log").read_text().count("start")


def start_flow(study: dict[str, Any], runs: Path, prefect_server: str) -> subprocess.Popen[bytes]:
    path = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": path}
    argv = [sys.executable, "-c", FLOW_SCRIPT, json.dumps(study), str(runs)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_default_sweep_of_18_gpu_cells_on_a_cpu_partition_runs_from_at_most_two_sbatch_calls(
    tmp_path: Path, sbatch_log: Path
) -> None:
    """No max_parallel, no gpus: cells that could use a GPU ask for none where the partition has none."""
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    problems = [{"name": f"c{i}", "overrides": {"gpu_mode": "vectorized"}} for i in range(18)]
    study = {**probe_study(markers, problems), "execution": {"retries": 0}}
    result = sweep(study=study, backend="slurm", runs_dir=str(runs))
    assert (result["total"], result["ok"]) == (18, 18)
    assert len(sbatch_log.read_text().splitlines()) <= 2
    assert len(submissions(sbatch_log)) == 1
    (script,) = (runs / ".slurm").glob("*/*_submission.sh")
    text = script.read_text()
    assert "#SBATCH --array=0-17%" in text and "gpus" not in text
    arrays = {job_of(markers, cell.run_id, timeout_s=0).split("_")[0] for cell in plan_sweep(study).cells}
    assert len(arrays) == 1


def test_a_job_shape_the_cluster_refuses_fails_the_sweep_before_anything_is_submitted(
    tmp_path: Path, sbatch_log: Path
) -> None:
    runs = tmp_path / "runs"
    study = probe_study(tmp_path / "markers", [{"name": "a"}, {"name": "b"}])
    state = sweep(
        study=study, backend="slurm", runs_dir=str(runs), backend_options={"gpus": 1}, return_state=True
    )
    assert state.is_failed()
    assert "Invalid generic resource" in state.message
    assert "change the SLURM option `gpus`" in state.message and "nothing was submitted" in state.message
    assert submissions(sbatch_log) == [] and len(sbatch_log.read_text().splitlines()) == 1
    assert not list(runs.glob(".slurm/*/*_submission.sh"))


def test_a_retried_cell_is_resubmitted_alone_outside_the_sweeps_array(
    tmp_path: Path, sbatch_log: Path
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    problems = [{"name": "a"}, {"name": "dies", "overrides": {"fail": "exit_once"}}, {"name": "b"}]
    study = probe_study(markers, problems, retries=1, retry_delay_s=0)
    result = sweep(study=study, backend="slurm", runs_dir=str(runs))
    assert (result["total"], result["ok"]) == (3, 3)
    rows = {row["cell"]: row for row in read_results(Path(result["results"]))}
    assert (rows["dies-s0"]["attempts"], rows["a-s0"]["attempts"]) == (2, 1)
    assert len(submissions(sbatch_log)) == 2  # the sweep's array, then the retried cell alone
    scripts = sorted((runs / ".slurm").glob("*/*_submission.sh"), key=lambda p: p.stat().st_mtime)
    assert [("#SBATCH --array=" in p.read_text()) for p in scripts] == [True, False]
    cells = {cell.name: cell for cell in plan_sweep(study).cells}
    assert "_" not in job_of(markers, cells["dies-s0"].run_id, timeout_s=0)  # its second job: no array


def test_a_restarted_sweep_adopts_the_jobs_of_a_killed_flow_and_no_cell_runs_twice(
    tmp_path: Path, prefect_server: str, sbatch_log: Path
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    study = probe_study(markers, [{"name": f"c{i}", "overrides": {"sleep_s": 20}} for i in range(3)])
    cells = plan_sweep(study).cells
    flow = start_flow(study, runs, prefect_server)
    try:
        jobs = [job_of(markers, cell.run_id, timeout_s=120) for cell in cells]
    finally:
        flow.kill()  # SIGKILL: no chance to cancel anything
        flow.wait()
    for job in jobs:
        assert wait_for_state(job, {"RUNNING"}, timeout_s=10)
    submitted = submissions(sbatch_log)
    result = sweep(study=study, backend="slurm", runs_dir=str(runs))
    assert (result["total"], result["ok"]) == (3, 3)
    assert submissions(sbatch_log) == submitted  # the restart submitted nothing
    assert [starts(markers, cell.run_id) for cell in cells] == [1, 1, 1]
    (array,) = {job.split("_")[0] for job in jobs}
    assert len(sacct(array, "JobID", duplicates=True)) == 3  # one job per cell, ever
    values = {row["cell"]: row["value"] for row in read_results(Path(result["results"]))}
    assert values == {cell.name: 2.0 * i for i, cell in enumerate(cells)}


def test_llc_sweep_cancel_cancels_the_jobs_of_a_killed_flow(tmp_path: Path, prefect_server: str) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    study = probe_study(markers, [{"name": f"s{i}", "overrides": {"sleep_s": 300}} for i in range(2)])
    plan = plan_sweep(study)
    flow = start_flow(study, runs, prefect_server)
    try:
        jobs = [job_of(markers, cell.run_id, timeout_s=120) for cell in plan.cells]
    finally:
        flow.kill()
        flow.wait()
    result = CliRunner().invoke(app, ["sweep", "cancel", plan.sweep_id, "--runs-dir", str(runs)])
    assert result.exit_code == 0, result.output
    assert sorted(result.stdout.split()) == sorted(jobs)
    for job in jobs:
        assert wait_for_state(job, {"CANCELLED"}, timeout_s=30)
