"""The SLURM backend reached from every entry point (`llc run --backend slurm`, a study's execution
block, `--backend-option`), and jobs whose node is lost: requeued and resumed, or an error row.

Runs on the real cluster of deployments/slurm; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from slurm_fixtures import ROOT, job_of, probe_study, sacct, sbatch_calls, slurm_cluster, wait_for_state
from typer.testing import CliRunner

from llc.backends.slurm.backend import SlurmBackend
from llc.cli import app
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep

__all__ = ["slurm_cluster"]

pytestmark = [pytest.mark.usefixtures("slurm_cluster", "prefect_server"), pytest.mark.timeout(240)]

WITHIN_S = 30
NODE = "llc"
TINY = ["n_data=200", "erm_steps=50", "chains=2", "steps=40", "warmup=10", "batch_size=32", "widths=[3,2]"]
TIMING = {"t_sampling_s", "t_erm_s", "t_warmup_s", "draws_per_second", "ess_per_second", "ess_per_grad_eval"}


def _llc_run(runs: Path, *extra: str) -> Path:
    sets = [arg for pair in TINY for arg in ("--set", pair)]
    argv = ["run", "--sampler", "sgld", "--preset", "quick", *sets, "--runs-dir", str(runs), *extra]
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    return Path(result.stdout.strip().splitlines()[-1])


def test_llc_run_on_slurm_gives_the_local_run_from_one_job(tmp_path: Path) -> None:
    local = _llc_run(tmp_path / "local", "--backend", "local")
    remote = _llc_run(
        tmp_path / "slurm", "--backend", "slurm", "--backend-option", "gpus=0", "--backend-option", "poll_s=1"
    )
    assert remote.name == local.name and (remote / "complete.json").exists()
    assert sbatch_calls(tmp_path / "slurm") == 1
    got, expected = (json.loads((p / "metrics.json").read_text()) for p in (remote, local))
    assert {k: v for k, v in got.items() if k not in TIMING} == {
        k: v for k, v in expected.items() if k not in TIMING
    }


def test_llc_run_with_an_unknown_backend_option_fails_before_submitting(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    argv = ["run", "--sampler", "sgld", "--backend", "slurm", "--backend-option", "partitoin=gpu"]
    result = CliRunner().invoke(app, [*argv, "--runs-dir", str(runs)])
    assert result.exit_code == 2
    assert "unknown SLURM option(s) ['partitoin']" in result.output
    assert not (runs / ".slurm").exists()  # submitit writes its job folder here on any sbatch


def test_a_studys_execution_block_picks_slurm_and_flags_add_options(tmp_path: Path) -> None:
    study = probe_study(
        tmp_path / "markers",
        [{"name": "a"}, {"name": "b"}],
        backend="slurm",
        backend_options={"poll_s": 1, "job_name": "from-study"},
    )
    result = sweep(study=study, runs_dir=str(tmp_path / "runs"), backend_options={"job_name": "from-flag"})
    assert (result["total"], result["ok"]) == (2, 2)
    assert sbatch_calls(tmp_path / "runs") == 1
    script = next((tmp_path / "runs" / ".slurm").glob("*/*_submission.sh")).read_text()
    assert "#SBATCH --job-name=from-flag-" in script  # the flag's option wins over the study's


def test_flows_sweep_py_takes_backend_options(tmp_path: Path) -> None:
    study = tmp_path / "study.json"
    study.write_text(json.dumps(probe_study(tmp_path / "markers", [{"name": "a"}])))
    env_argv = [sys.executable, str(ROOT / "flows" / "sweep.py"), "--study", str(study), "--backend", "slurm"]
    argv = [*env_argv, "--runs-dir", str(tmp_path / "runs"), "--backend-option", "poll_s=1"]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}  # the probe experiment
    done = subprocess.run(
        [*argv, "--backend-option", "partitoin=x"], capture_output=True, text=True, timeout=180, env=env
    )
    assert done.returncode == 1 and "partitoin" in done.stderr
    assert not (tmp_path / "runs" / ".slurm").exists()  # refused before any submission


# -- a lost node ----------------------------------------------------------------------------------


def _node_state() -> str:
    out = subprocess.run(["sinfo", "-h", "-n", NODE, "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


@pytest.fixture
def node_back() -> Iterator[None]:
    """Whatever a test does to the node, it is idle again afterwards."""
    yield
    deadline = time.monotonic() + 60
    while _node_state() not in ("idle", "mixed", "allocated"):
        if time.monotonic() > deadline:
            pytest.fail(f"node {NODE} did not come back: {_node_state()}")
        subprocess.run(["scontrol", "update", f"NodeName={NODE}", "State=RESUME"], capture_output=True)
        time.sleep(1)


def _lose_node() -> float:
    subprocess.run(
        ["scontrol", "update", f"NodeName={NODE}", "State=DOWN", "Reason=llc-test-node-lost"], check=True
    )
    return time.monotonic()


def _probe(tmp_path: Path, **overrides: Any) -> tuple[Path, Any]:
    markers = tmp_path / "markers"
    (cell,) = plan_sweep(probe_study(markers, [{"name": "probe", "overrides": overrides}])).cells
    return markers, cell


@pytest.mark.usefixtures("node_back")
def test_a_job_whose_node_is_lost_is_requeued_and_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    markers, cell = _probe(tmp_path, steps=12, step_s=1.0)
    log = markers / f"{cell.run_id}.log"
    with SlurmBackend(max_parallel=1, poll_s=1) as backend:
        job = backend.submit(cell, tmp_path / "runs", True, 300)
        job_id = job_of(markers, cell.run_id, timeout_s=60)
        deadline = time.monotonic() + 60
        while not (log.exists() and "step 3" in log.read_text()):
            assert time.monotonic() < deadline, "the probe did not reach step 3"
            time.sleep(0.2)
        _lose_node()
        record = job.wait(timeout=180)
    assert record is not None and record.status == "ok", record
    lines = log.read_text().splitlines()
    starts = [int(line.split()[1]) for line in lines if line.startswith("start")]
    steps = [int(line.split()[1]) for line in lines if line.startswith("step")]
    assert len(starts) == 2 and starts[0] == 0 and starts[1] >= 3  # resumed, not restarted
    # A step logged just before the kill may be redone once; none is lost.
    assert sorted(set(steps)) == list(range(1, 13)) and len(steps) - 12 <= 1
    assert "NODE_FAIL" in {row["State"] for row in sacct(job_id, "State", duplicates=True)}


@pytest.mark.usefixtures("node_back")
def test_a_job_whose_node_is_lost_without_requeue_is_an_error_row_naming_node_fail(tmp_path: Path) -> None:
    markers, cell = _probe(tmp_path, sleep_s=300)
    with SlurmBackend(max_parallel=1, poll_s=1, sbatch={"no-requeue": True}) as backend:
        job = backend.submit(cell, tmp_path / "runs", True, 300)
        job_id = job_of(markers, cell.run_id, timeout_s=60)
        wait_for_state(job_id, {"RUNNING"})
        lost_at = _lose_node()
        record = job.wait(timeout=WITHIN_S + 5)
    assert record is not None and time.monotonic() - lost_at < WITHIN_S
    assert record.error_type == "SlurmNodeFail" and record.retryable
    assert f"SLURM job {job_id} ended NODE_FAIL" in (record.error or "")
    assert "stderr: " in (record.error or "")
