"""Sweeps as separate processes: SIGKILLed mid-run then resumed, and two sweeps sharing one runs directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from sweep_probe import alive, executions, pids, probe_study, rows_by_cell, wait_until

from llc.rundir import RunDir
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


def sweep_process(study: Path, runs: Path, env: dict[str, str], **popen: object) -> subprocess.Popen[str]:
    """`python flows/sweep.py` in a new session, so the whole process group can be killed."""
    base = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return subprocess.Popen(
        [sys.executable, str(ROOT / "flows" / "sweep.py"), "--study", str(study), "--runs-dir", str(runs)],
        env={**base, "PYTHONPATH": str(TESTS), **env},
        cwd=ROOT,
        text=True,
        start_new_session=True,
        **popen,  # type: ignore[arg-type]
    )


def write_study(path: Path, study: dict[str, object]) -> Path:
    path.write_text(yaml.safe_dump(study))
    return path


def complete_run_ids(runs: Path, study: Path) -> set[str]:
    return {c.run_id for c in plan_sweep(study).cells if RunDir(runs, c.run_id).is_complete()}


def test_a_sigkilled_sweep_resumes_computing_only_unfinished_cells(
    tmp_path: Path, prefect_server: str, fresh_prefect_home: Path
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    cells = [{"name": f"c{i}", "overrides": {"sleep_s": 0.7}} for i in range(8)]
    study = write_study(tmp_path / "study.yaml", probe_study(markers, cells, max_parallel=2))
    # Its own PREFECT_HOME and no API URL: the killed flow runs on its own local server.
    env = {"PREFECT_HOME": str(fresh_prefect_home)}
    log = tmp_path / "flow.log"
    with log.open("w") as out:
        flow = sweep_process(study, runs, env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_until(
            lambda: len(complete_run_ids(runs, study)) >= 3 or flow.poll() is not None,
            180,
            "three finished cells",
        )
        assert flow.poll() is None, f"the flow process ended early:\n{log.read_text()[-3000:]}"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nflow output (tail):\n{log.read_text()[-3000:]}") from None
    finally:
        os.killpg(flow.pid, signal.SIGKILL)  # the flow process, mid-run
        flow.wait()
    workers = pids(markers)
    wait_until(lambda: not any(alive(pid) for pid in workers), 10, "the orphaned workers to stop")
    done_before = complete_run_ids(runs, study)
    manifests = {run_id: (runs / run_id / "complete.json").read_bytes() for run_id in done_before}
    executed_before = executions(markers)
    assert 3 <= len(done_before) < 8

    state = sweep(study=str(study), runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    rows = rows_by_cell(result["results"])
    assert {r["status"] for r in rows.values()} == {"ok"} and len(rows) == 8
    assert {r["run_id"] for r in rows.values() if r["cached"]} == done_before
    executed_after = executions(markers)
    for row in rows.values():  # finished cells ran once; every other cell exactly once more
        again = 0 if row["run_id"] in done_before else 1
        assert executed_after[row["run_id"]] == executed_before.get(row["run_id"], 0) + again
    assert sum(executed_after.values()) - sum(executed_before.values()) == 8 - len(done_before)
    assert {run_id: (runs / run_id / "complete.json").read_bytes() for run_id in done_before} == manifests


def test_two_concurrent_sweeps_on_one_runs_directory_compute_each_cell_once(
    tmp_path: Path, prefect_server: str
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    cells = [{"name": f"c{i}", "overrides": {"sleep_s": 0.5}} for i in range(6)]
    study = write_study(tmp_path / "study.yaml", probe_study(markers, cells, max_parallel=2))
    env = {"PREFECT_API_URL": prefect_server}
    first, second = (
        sweep_process(study, runs, env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)
    )
    outputs = [process.communicate(timeout=240) for process in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert sorted(executions(markers).values()) == [1] * 6
    run_ids = {c.run_id for c in plan_sweep(study).cells}
    assert all(RunDir(runs, run_id).is_complete() for run_id in run_ids)
    cached = [_cached_count(err) for _, err in outputs]
    assert sum(cached) == 6, outputs  # every cell computed by one sweep was found complete by the other
    assert {r["status"] for r in rows_by_cell(outputs[0][0].strip().splitlines()[-1]).values()} == {"ok"}


def _cached_count(stderr: str) -> int:
    line = next(line for line in stderr.splitlines() if " cached" in line and "cells:" in line)
    return int(line.split(",")[-1].split()[0])


def test_a_local_sweep_keeps_no_ledger_of_jobs(tmp_path: Path) -> None:
    """Local cells have no job ids; an empty ledger would make the sweep look like one with jobs to adopt
    or cancel (`llc sweep cancel` matches sweeps that hold one)."""
    from llc.backends.base import Ledger

    ledger = Ledger(tmp_path / "sweep" / "jobs.jsonl", "local")
    ledger.add([], "")
    assert not ledger.path.exists()


def test_a_running_local_sweep_shows_its_pending_cells_and_is_cancelled_from_another_shell(
    tmp_path: Path, prefect_server: str
) -> None:
    """`llc sweep status` on a live local sweep lists what is still to come; `llc sweep cancel` stops its
    flow as Ctrl-C does: the flow process exits 130, its workers end, finished cells are kept."""
    from typer.testing import CliRunner

    from llc.cli import app

    markers, runs = tmp_path / "markers", tmp_path / "runs"
    cells = [{"name": f"c{i}", "overrides": {"sleep_s": 0.2 if i < 2 else 30}} for i in range(6)]
    study = write_study(tmp_path / "study.yaml", probe_study(markers, cells, max_parallel=2, retries=0))
    (sweep_id,) = [plan_sweep(study).sweep_id]
    log = tmp_path / "flow.log"
    with log.open("w") as out:
        flow = sweep_process(
            study, runs, {"PREFECT_API_URL": prefect_server}, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: len(complete_run_ids(runs, study)) >= 2 or flow.poll() is not None, 120, "2 cells")
        wait_until(lambda: (runs / "sweeps" / sweep_id / "live.json").exists(), 10, "live.json")
        status = CliRunner().invoke(app, ["sweep", "status", sweep_id, "--runs-dir", str(runs)])
        assert status.exit_code == 0, status.output
        assert f"sweep {sweep_id} is running" in status.stdout and "queued or running" in status.stdout
        assert re.search(r"queued or running: c\d-s0", status.stdout), status.stdout  # a cell still to come
        finished = complete_run_ids(runs, study)
        cancelled = CliRunner().invoke(app, ["sweep", "cancel", sweep_id, "--runs-dir", str(runs)])
        assert cancelled.exit_code == 0 and "stops now" in cancelled.output, cancelled.output
        assert flow.wait(timeout=60) == 130, log.read_text()[-3000:]
    finally:
        if flow.poll() is None:
            os.killpg(flow.pid, signal.SIGKILL)
            flow.wait()
    workers = pids(markers)
    wait_until(lambda: not any(alive(pid) for pid in workers), 20, "the workers to stop")
    kept = complete_run_ids(runs, study)
    assert len(finished) >= 2 and finished <= kept  # the finished results are kept
    rows = rows_by_cell(runs / "sweeps" / sweep_id / "results.csv")
    assert {row["status"] for row in rows.values() if row["run_id"] not in kept} == {"cancelled"}, rows
    assert not (runs / "sweeps" / sweep_id / "live.json").exists()
    after = CliRunner().invoke(app, ["sweep", "cancel", sweep_id, "--runs-dir", str(runs)])
    assert after.exit_code == 0 and "not running" in after.output
