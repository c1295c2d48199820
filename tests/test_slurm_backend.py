"""The SLURM backend on the real cluster of deployments/slurm: arrays, records for every way a job
ends, time limits that requeue from a checkpoint, sacct outages, and cancellation reaching the cluster.

Every job event is checked to reach its record within 30 s, and every wait is bounded.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from slurm_fixtures import (
    ROOT,
    ended_at,
    job_of,
    jobs_named,
    probe_study,
    sacct,
    sbatch_calls,
    slurm_backend_registered,
    slurm_cluster,
    slurmdbd_stopped,
    wait_for_state,
)

from llc.backends import run_on
from llc.backends.slurm.backend import SlurmBackend, SlurmSubmitError
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep
from llc.sweeps.results import read_results

__all__ = ["slurm_backend_registered", "slurm_cluster"]

pytestmark = [
    pytest.mark.usefixtures("slurm_cluster", "prefect_server", "slurm_backend_registered"),
    pytest.mark.timeout(240),  # far above what each takes; a hang fails instead of blocking the suite
]

WITHIN_S = 30  # a job event reaches its record within this


def rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["cell"]: row for row in read_results(Path(result["results"]))}


def task_ends(flow_run_id: Any) -> dict[str, datetime]:
    """When each task run (one per cell) of a flow run finished."""
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {run.name: run.end_time for run in runs if run.end_time is not None}


def local(moment: datetime) -> datetime:
    """sacct prints local times without a zone."""
    return moment.astimezone()


# -- the results are the local backend's -----------------------------------------------------------

LLC_STUDY = {
    "name": "tiny",
    "preset": "quick",
    "base": {"n_data": 200, "erm_steps": 50, "chains": 2, "steps": 40, "warmup": 10, "batch_size": 32},
    "problems": [{"name": "linear", "overrides": {"widths": [3, 2]}}],
    "samplers": [{"name": "sgld"}, {"name": "hmc"}],
}
TIMING = {
    "duration_s",
    "t_sampling_s",
    "t_erm_s",
    "t_warmup_s",
    "draws_per_second",
    "ess_per_second",
    "run_dir",
}


def test_a_small_llc_sweep_gives_the_local_backends_results_from_one_sbatch(tmp_path: Path) -> None:
    options = {"threads_per_cell": 1}
    on_local = sweep(
        study=LLC_STUDY, backend="local", runs_dir=str(tmp_path / "local"), backend_options=options
    )
    on_slurm = sweep(
        study=LLC_STUDY,
        backend="slurm",
        runs_dir=str(tmp_path / "slurm"),
        backend_options={**options, "gpus": 0},
    )
    assert (on_slurm["total"], on_slurm["ok"]) == (2, 2)
    expected, got = rows(on_local), rows(on_slurm)
    assert set(got) == {"linear-sgld-s0", "linear-hmc-s0"}
    for cell, row in got.items():
        assert {k: v for k, v in row.items() if k not in TIMING} == {
            k: v for k, v in expected[cell].items() if k not in TIMING
        }
        assert isinstance(row["llc_mean"], float)
    assert sbatch_calls(tmp_path / "slurm") == 1


# -- one sweep, every way a job can end ------------------------------------------------------------


@pytest.fixture(scope="module")
def mixed_sweep(tmp_path_factory: pytest.TempPathFactory, slurm_backend_registered: None) -> dict[str, Any]:
    """One sweep whose cells finish, raise, get scancelled, eat memory, and outlive their time limit.

    Time limits are 1 min with the checkpoint signal 20 s before: SLURM's minute-long timer sends it
    10 to 40 s after a job starts, so 40 one-second steps always meet it once at least.
    """
    tmp = tmp_path_factory.mktemp("mixed")
    markers, runs = tmp / "markers", tmp / "runs"
    study = probe_study(
        markers,
        [
            {"name": "fine"},
            {"name": "raises", "overrides": {"fail": "raise"}},
            {"name": "scancelled", "overrides": {"sleep_s": 300}},
            {"name": "memory", "overrides": {"fail": "memory", "memory_mb": 1000}},
            {"name": "timelimit", "overrides": {"steps": 40, "step_s": 1.0}},
        ],
    )
    cells = {cell.name: cell for cell in plan_sweep(study).cells}
    cancelled: dict[str, Any] = {}

    def scancel_when_running() -> None:
        job = job_of(markers, cells["scancelled-s0"].run_id, timeout_s=60)
        cancelled["job"], cancelled["at"] = job, datetime.now().astimezone()
        subprocess.run(["scancel", job], check=True)

    canceller = threading.Thread(target=scancel_when_running, daemon=True)
    canceller.start()
    options = {"timeout_min": 1, "signal_delay_s": 20, "max_requeues": 5, "mem_gb": 0.5}
    state = sweep(
        study=study, backend="slurm", runs_dir=str(runs), backend_options=options, return_state=True
    )
    canceller.join(timeout=5)
    assert state.is_completed(), state.message
    result = state.result()
    jobs = {name: job_of(markers, cell.run_id, timeout_s=0) for name, cell in cells.items()}
    return {
        "rows": rows(result),
        "ends": task_ends(state.state_details.flow_run_id),
        "jobs": jobs,
        "cancelled": cancelled,
        "markers": markers,
        "runs": runs,
        "cells": cells,
    }


def test_the_cells_of_a_sweep_leave_in_one_sbatch_as_one_job_array(mixed_sweep: dict[str, Any]) -> None:
    assert sbatch_calls(mixed_sweep["runs"]) == 1
    arrays = {job.split("_")[0] for job in mixed_sweep["jobs"].values()}
    assert len(arrays) == 1
    assert sorted(int(job.split("_")[1]) for job in mixed_sweep["jobs"].values()) == [0, 1, 2, 3, 4]


def test_a_cell_that_raises_is_an_error_row_with_its_traceback(mixed_sweep: dict[str, Any]) -> None:
    row = mixed_sweep["rows"]["raises-s0"]
    assert (row["status"], row["error_type"], row["stage"]) == ("error", "ValueError", "run")
    errors = (mixed_sweep["runs"] / "sweeps").glob("*/errors.csv")
    assert "probe 1.0 raised on purpose" in next(errors).read_text()
    job = mixed_sweep["jobs"]["raises-s0"]
    assert mixed_sweep["ends"]["raises-s0"] - local(ended_at(job)) < timedelta(seconds=WITHIN_S)
    assert mixed_sweep["rows"]["fine-s0"]["status"] == "ok"


def test_a_job_scancelled_while_running_is_an_error_row_naming_state_logs_and_stderr(
    mixed_sweep: dict[str, Any],
) -> None:
    row = mixed_sweep["rows"]["scancelled-s0"]
    assert (row["status"], row["error_type"]) == ("error", "SlurmCancelled")
    error = _error(mixed_sweep, "scancelled-s0")
    job = mixed_sweep["cancelled"]["job"]
    assert f"SLURM job {job} ended CANCELLED" in error["error"]
    stdout, stderr = (error["error"].split(f"{name}: ")[1].split(";")[0] for name in ("stdout", "stderr"))
    assert Path(stdout).exists() and Path(stderr).exists()
    assert "CANCELLED" in error["traceback"]  # the stderr tail: slurmstepd's cancellation notice
    assert mixed_sweep["ends"]["scancelled-s0"] - mixed_sweep["cancelled"]["at"] < timedelta(seconds=WITHIN_S)


def test_a_job_over_its_memory_limit_is_killed_and_recorded_as_out_of_memory(
    mixed_sweep: dict[str, Any],
) -> None:
    row = mixed_sweep["rows"]["memory-s0"]
    assert (row["status"], row["error_type"]) == ("error", "SlurmOutOfMemory")
    error = _error(mixed_sweep, "memory-s0")
    assert "exceeded memory limit" in error["traceback"]
    assert "raise mem_gb" in error["error"]
    job = mixed_sweep["jobs"]["memory-s0"]
    # Killed long before the probe's 60 s of holding the memory were over.
    assert mixed_sweep["ends"]["memory-s0"] - local(ended_at(job)) < timedelta(seconds=WITHIN_S)
    assert int(sacct(job, "ElapsedRaw")[0]["ElapsedRaw"]) < 30


def test_a_job_past_its_time_limit_is_requeued_and_resumes_from_its_checkpoint(
    mixed_sweep: dict[str, Any],
) -> None:
    row = mixed_sweep["rows"]["timelimit-s0"]
    assert row["status"] == "ok", row
    run_id = mixed_sweep["cells"]["timelimit-s0"].run_id
    log = (mixed_sweep["markers"] / f"{run_id}.log").read_text().splitlines()
    starts = [int(line.split()[1]) for line in log if line.startswith("start")]
    steps = [int(line.split()[1]) for line in log if line.startswith("step")]
    assert len(starts) >= 2 and starts[0] == 0 and all(s > 0 for s in starts[1:])  # resumed, not restarted
    assert steps == list(range(1, 41))  # no step ran twice
    job = mixed_sweep["jobs"]["timelimit-s0"]
    assert "REQUEUED" in {r["State"] for r in sacct(job, "State", duplicates=True)}
    assert mixed_sweep["ends"]["timelimit-s0"] - local(ended_at(job)) < timedelta(seconds=WITHIN_S)


def _error(mixed_sweep: dict[str, Any], cell: str) -> dict[str, Any]:
    errors = read_results(next((mixed_sweep["runs"] / "sweeps").glob("*/errors.csv")))
    return next(e for e in errors if e["cell"] == cell)


# -- states never hang ----------------------------------------------------------------------------


def _cells(tmp_path: Path, *problems: dict[str, Any]) -> tuple[Path, list[Any]]:
    markers = tmp_path / "markers"
    return markers, plan_sweep(probe_study(markers, list(problems))).cells


def test_without_sacct_states_come_from_squeue_and_a_cancelled_job_is_still_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    markers, (fine, sleeper) = _cells(
        tmp_path, {"name": "fine"}, {"name": "sleeper", "overrides": {"sleep_s": 300}}
    )
    caplog.set_level(logging.WARNING, logger="llc.backends.slurm")
    with slurmdbd_stopped(), SlurmBackend(max_parallel=2, poll_s=1) as backend:
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode != 0
        jobs = [backend.submit(cell, tmp_path / "runs", True, 120) for cell in (fine, sleeper)]
        assert jobs[0].wait(timeout=60).status == "ok"
        job = job_of(markers, sleeper.run_id)
        subprocess.run(["scancel", job], check=True)
        cancelled_at = time.monotonic()
        record = jobs[1].wait(timeout=WITHIN_S)
        assert record is not None and time.monotonic() - cancelled_at < WITHIN_S
        assert record.error_type == "SlurmCancelled" and "ended CANCELLED" in (record.error or "")
    assert "sacct fails: states come from squeue" in caplog.text


def test_a_cell_past_its_timeout_is_scancelled_and_recorded_as_a_timeout(tmp_path: Path) -> None:
    _, (sleeper,) = _cells(tmp_path, {"name": "sleeper", "overrides": {"sleep_s": 300}})
    with SlurmBackend(max_parallel=1, poll_s=1) as backend:
        job = backend.submit(sleeper, tmp_path / "runs", True, 3)
        record = job.wait(timeout=WITHIN_S)
    assert record is not None and record.error_type == "Timeout"
    assert wait_for_state(job.job_id, {"CANCELLED"}, timeout_s=10)


def test_a_prefect_task_timeout_scancels_the_job(tmp_path: Path) -> None:
    _, (sleeper,) = _cells(tmp_path, {"name": "sleeper", "overrides": {"sleep_s": 300}})

    @task(timeout_seconds=5)
    def run_sleeper(backend: SlurmBackend) -> Any:
        return run_on(backend, sleeper, tmp_path / "runs", True, None)

    @flow
    def one_cell() -> tuple[str | None, str]:
        with SlurmBackend(max_parallel=1, poll_s=1) as backend:
            return run_sleeper(backend, return_state=True).name, backend.job_name

    state, job_name = one_cell()
    assert state == "TimedOut"
    (job,) = jobs_named(job_name)
    assert wait_for_state(job, {"CANCELLED"}, timeout_s=10)


def test_an_sbatch_refusal_fails_the_submission_at_once_with_sbatchs_message(tmp_path: Path) -> None:
    _, (fine,) = _cells(tmp_path, {"name": "fine"})
    with SlurmBackend(max_parallel=1, partition="no-such-partition") as backend:
        start = time.monotonic()
        with pytest.raises(SlurmSubmitError, match="invalid partition") as refused:
            backend.submit(fine, tmp_path / "runs", True, 60)
    assert time.monotonic() - start < 10 and refused.value.retryable is False


# -- cancelling the flow run cancels every job -----------------------------------------------------

FLOW_SCRIPT = """
import sys
from llc.backends import BACKENDS
BACKENDS["slurm"] = "llc.backends.slurm.backend:SlurmBackend"
from llc.sweeps.flow import sweep
import json
sweep(study=json.loads(sys.argv[1]), backend="slurm", runs_dir=sys.argv[2])
"""


def test_cancelling_the_flow_run_scancels_every_job(tmp_path: Path, prefect_server: str) -> None:
    """A worker or runner cancels a flow run by sending its process SIGTERM (Prefect 3.8's runner)."""
    markers = tmp_path / "markers"
    study = probe_study(markers, [{"name": f"sleeper{i}", "overrides": {"sleep_s": 300}} for i in range(3)])
    cells = plan_sweep(study).cells
    env = {**os.environ, "PREFECT_API_URL": prefect_server, "PYTHONPATH": str(ROOT / "tests")}
    flow = subprocess.Popen(
        [sys.executable, "-c", FLOW_SCRIPT, json.dumps(study), str(tmp_path / "runs")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        jobs = [job_of(markers, cell.run_id, timeout_s=90) for cell in cells]
        flow.send_signal(signal.SIGTERM)
        for job in jobs:
            assert wait_for_state(job, {"CANCELLED"}, timeout_s=WITHIN_S)
        output, _ = flow.communicate(timeout=WITHIN_S)
    finally:
        flow.kill()
    assert flow.returncode != 0
    assert b"SIGTERM: stopping the sweep" in output
    with get_client(sync_client=True) as client:
        runs = [r for r in client.read_flow_runs() if r.parameters.get("runs_dir") == str(tmp_path / "runs")]
    assert [run.state_name for run in runs] == ["Cancelled"]
    rows = read_results(tmp_path / "runs" / "sweeps" / plan_sweep(study).sweep_id / "results.csv")
    assert {row["status"] for row in rows} == {"cancelled"} and len(rows) == 3
