"""The real SLURM cluster of deployments/slurm for the SLURM tests, and a probe experiment run on it.

The probe leaves a file per execution naming its SLURM job, so tests can scancel a running cell or
look it up in sacct; it raises, eats memory or counts checkpointed steps on demand.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, ConfigDict

from llc.rundir import CHECKPOINT

ROOT = Path(__file__).resolve().parents[1]
UP = ROOT / "deployments" / "slurm" / "up.sh"
STATE = Path(os.environ.get("LLC_SLURM_STATE", "/var/lib/llc-slurm"))
PROBE = "slurm_fixtures:SlurmProbe"


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Bring the cluster up (quick when it already is); yields its node name."""
    done = subprocess.run([str(UP)], capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"deployments/slurm/up.sh failed:\n{done.stdout}{done.stderr}")
    return "llc"


@pytest.fixture(scope="session")
def slurm_backend_registered() -> Iterator[None]:
    """`backend="slurm"` for the sweep flow, whether or not llc.backends lists it yet."""
    from llc.backends import BACKENDS

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(BACKENDS, "slurm", "llc.backends.slurm.backend:SlurmBackend")
        yield


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    x: float = 0.0
    markers: str
    sleep_s: float = 0.0
    fail: Literal["none", "raise", "memory", "exit_once"] = "none"  # exit_once: dies, then runs
    memory_mb: int = 0
    steps: int = 0  # checkpointed steps, resumed after a requeue
    step_s: float = 1.0
    gpu_mode: Literal["off", "vectorized", "sequential"] = "off"  # what an LLC cell says about GPUs


class SlurmProbe:
    config_model = ProbeConfig

    def run(self, config: ProbeConfig, run_dir: Path) -> dict[str, Any]:
        folder = Path(config.markers)
        folder.mkdir(parents=True, exist_ok=True)
        job = os.environ.get("SLURM_ARRAY_JOB_ID", os.environ.get("SLURM_JOB_ID", "local"))
        if "SLURM_ARRAY_TASK_ID" in os.environ:
            job += "_" + os.environ["SLURM_ARRAY_TASK_ID"]
        (folder / f"{run_dir.name}.job").write_text(job)
        if config.fail == "exit_once" and not (folder / f"{run_dir.name}.exited").exists():
            (folder / f"{run_dir.name}.exited").touch()
            os._exit(3)  # no result: SlurmFailed, which is retried
        if config.fail == "raise":
            raise ValueError(f"probe {config.x} raised on purpose")
        if config.fail == "memory":
            hog = [bytearray(os.urandom(1)) * (20 << 20) for _ in range(config.memory_mb // 20)]
            time.sleep(60)
            return {"held_mb": 20 * len(hog)}
        starts = count_steps(
            run_dir / CHECKPOINT, folder / f"{run_dir.name}.log", config.steps, config.step_s
        )
        time.sleep(config.sleep_s)
        return {"value": 2 * config.x, "starts": starts}


def count_steps(checkpoint: Path, log: Path, steps: int, step_s: float) -> list[int]:
    """Run `steps` steps from the last checkpoint (kept in the run directory across a requeue, as the
    LLC engine keeps its own); `log` lists each start and step."""
    done = int(checkpoint.read_text()) if checkpoint.exists() else 0
    with log.open("a") as f:
        f.write(f"start {done}\n")
    while done < steps:
        time.sleep(step_s)
        # A step and its checkpoint are one: submitit's time-limit signal waits until both are written.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
        done += 1
        with log.open("a") as f:
            f.write(f"step {done}\n")
        checkpoint.with_suffix(".tmp").write_text(str(done))
        checkpoint.with_suffix(".tmp").replace(checkpoint)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR2})
    return [int(line.split()[1]) for line in log.read_text().splitlines() if line.startswith("start")]


def probe_study(markers: Path, problems: list[dict[str, Any]], **execution: Any) -> dict[str, Any]:
    """An inline study of the probe: one cell per problem entry {name, overrides}, each with its own x."""
    entries = [{**p, "overrides": {"x": i, **p.get("overrides", {})}} for i, p in enumerate(problems)]
    return {
        "name": "slurm-probe",
        "experiment": PROBE,
        "base": {"markers": str(markers)},
        "problems": entries,
        "execution": {"max_parallel": 8, "retries": 0, "timeout_s": 300, **execution},
    }


def job_of(markers: Path, run_id: str, timeout_s: float = 30) -> str:
    """The SLURM job id of a probe run, once it has started."""
    path = markers / f"{run_id}.job"
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"probe {run_id} did not start within {timeout_s} s")
        time.sleep(0.1)
    return path.read_text()


def sacct(job_id: str, *fields: str, duplicates: bool = False) -> list[dict[str, str]]:
    """sacct's rows (allocations only) for one job, by field name."""
    argv = ["sacct", "-X", "-P", "-n", f"--format={','.join(fields)}", "-j", job_id]
    out = subprocess.run(argv + (["-D"] if duplicates else []), capture_output=True, text=True, check=True)
    return [dict(zip(fields, line.split("|"), strict=True)) for line in out.stdout.splitlines()]


def jobs_named(name: str) -> list[str]:
    """Ids of the jobs (array elements too) with this name, from squeue (it knows them for MinJobAge)."""
    argv = ["squeue", "--array", "--noheader", "--states=all", f"--name={name}", "--format=%i"]
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split()


def ended_at(job_id: str) -> datetime:
    """When SLURM says the job ended (local time, whole seconds)."""
    return datetime.fromisoformat(sacct(job_id, "End")[0]["End"])


def wait_for_state(job_id: str, states: set[str], timeout_s: float = 30) -> str:
    """The job's state (sacct, else squeue) once it is one of `states`."""
    from llc.backends.slurm.submitit_adapter import Watcher, base_state

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = Watcher(0.1).states([job_id])[job_id]
        if base_state(state) in states:
            return state
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} did not reach {states} within {timeout_s} s")


@pytest.fixture
def sbatch_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every sbatch call from now on (this process and its children) leaves its arguments as a line here."""
    real = subprocess.run(["which", "sbatch"], capture_output=True, text=True, check=True).stdout.strip()
    shims, log = tmp_path / "shims", tmp_path / "sbatch.log"
    shims.mkdir()
    shim = shims / "sbatch"
    shim.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}{os.pathsep}{os.environ['PATH']}")
    log.touch()
    return log


def sbatch_calls(runs_dir: Path) -> int:
    """sbatch calls the backend made for a runs directory: submitit keeps one script per sbatch."""
    return len(list((runs_dir / ".slurm").glob("*/*_submission.sh")))


@contextmanager
def slurmdbd_stopped() -> Iterator[None]:
    """Accounting down (sacct fails) for the block; up.sh brings it back afterwards."""
    pid = int((STATE / "run" / "slurmdbd.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True).returncode == 0:
        if time.monotonic() > deadline:
            raise TimeoutError("sacct still answers 30 s after slurmdbd was stopped")
        time.sleep(0.2)
    try:
        yield
    finally:
        subprocess.run([str(UP)], capture_output=True, check=True, timeout=120)
