"""Everything the SLURM backend takes from submitit, and the only module that imports it: the one place
that reaches into submitit's private members (written against submitit 1.5.4; tests/test_slurm_submitit.py
pins what the backend relies on with recorded sacct and squeue output, without a cluster).

Also the SLURM job states as sacct and squeue name them, which the watcher sorts into waiting, running,
settling and ended.
"""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

# submitit configures logging when imported (`logging.config.dictConfig`), which closes every handler
# already installed, Prefect's too, and deadlocks on Prefect's log worker inside a flow run. Its jobs,
# which inherit the environment, still log as usual.
_level = os.environ.get("SUBMITIT_LOG_LEVEL")
os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
try:
    from submitit import JobEnvironment, SlurmExecutor, SlurmJob
    from submitit.core.utils import UncompletedJobError, pickle_load
    from submitit.helpers import Checkpointable
    from submitit.slurm.slurm import SlurmInfoWatcher, _make_sbatch_string
finally:
    if _level is None:
        del os.environ["SUBMITIT_LOG_LEVEL"]
    else:
        os.environ["SUBMITIT_LOG_LEVEL"] = _level

__all__ = [
    "PENDING", "RUNNING", "SETTLING", "Checkpointable", "JobEnvironment", "SlurmExecutor", "SlurmJob",
    "Watcher", "base_state", "outcome", "output", "read_result", "sbatch_script",
]  # fmt: skip

log = logging.getLogger(__name__)

# Waiting to run: queued, requeued, or held until someone releases it.
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
)
# A preempted job, or one whose node was lost, is requeued a moment later when the cluster requeues
# such jobs (the default); the backend counts it as ended only once it has stayed so for a while.
SETTLING = frozenset({"PREEMPTED", "NODE_FAIL"})


class Watcher(SlurmInfoWatcher):
    """submitit's sacct watcher, safe to share between threads, that also asks squeue (which knows jobs
    for MinJobAge after they end) about jobs sacct does not report, and forgets those neither knows."""

    def __init__(self, poll_s: float) -> None:
        super().__init__(delay_s=poll_s)  # type: ignore[arg-type]
        self._lock = threading.RLock()  # `update` reads states through `get_info`, which comes back here
        self._sacct_failing = False

    def update_if_long_enough(self, mode: str) -> None:
        with self._lock:  # one sacct call per poll, however many cells wait
            super().update_if_long_enough(mode)

    def update(self) -> None:
        if (command := self._make_command()) is None:  # no job left to ask about
            return
        sacct = output(command)
        found = self.read_info(sacct or "")
        unknown = sorted({job.split("_")[0] for job in self._registered - self._finished if job not in found})
        if unknown:
            squeue = output(["squeue", "--array", "-h", "-t", "all", "-o", "%i|%T", "-j", ",".join(unknown)])
            found = {**self.read_info("JobID|State\n" + (squeue or "")), **found}
        for job in self._registered - self._finished - found.keys():  # neither knows it: UNKNOWN again
            self._info_dict.pop(job, None)
        if (sacct is None) != self._sacct_failing:
            self._sacct_failing = sacct is None
            log.warning("sacct %s", "fails: states come from squeue" if sacct is None else "answers again")
        self._info_dict.update(found)
        self._last_status_check = time.time()
        self._finished |= {job for job in self._registered - self._finished if self.is_done(job, "cache")}

    def is_done(self, job_id: str, mode: str = "standard") -> bool:
        """Ended for good: a requeued, held, preempted or node-failed job may run again."""
        return base_state(self.get_state(job_id, mode)) not in PENDING | RUNNING | SETTLING | {"UNKNOWN"}

    def states(self, job_ids: list[str]) -> dict[str, str]:
        """Each job's state now (UNKNOWN while neither sacct nor squeue knows it)."""
        for job_id in job_ids:
            self.register_job(job_id)
        self.update_if_long_enough("force")
        return {job_id: self.get_state(job_id, "cache") for job_id in job_ids}


def sbatch_script(folder: Path, count: int, parameters: dict[str, Any], command: str = "true") -> str:
    """The sbatch script submitit would submit for `count` cells with these SlurmExecutor parameters."""
    return _make_sbatch_string(command=command, folder=folder, map_count=count, **parameters)


def outcome(job: SlurmJob[Any], grace_s: float) -> tuple[str, Any] | None:
    """An ended job's ("success" | "error", value), waiting up to `grace_s` for its result file to show
    on a shared filesystem; None when it wrote none."""
    job._results_timeout_s = grace_s  # type: ignore[assignment]
    try:
        return job._get_outcome_and_result()
    except (UncompletedJobError, UnicodeDecodeError):  # no result (submitit reads the logs as text)
        return None


def read_result(path: Path) -> tuple[str, Any]:
    """A result file's ("success" | "error", value)."""
    result: tuple[str, Any] = pickle_load(path)
    return result


def base_state(state: str) -> str:
    """`CANCELLED by 0` -> `CANCELLED`."""
    return state.split(" ", 1)[0].rstrip("+")


def output(argv: list[str], level: int = logging.DEBUG) -> str | None:
    """The command's output, or None when it fails, is missing or does not answer in 30 s."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.log(level, "%s failed: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.log(level, "%s exited %d: %s", argv[0], done.returncode, done.stderr.strip())
        return None
    return done.stdout
