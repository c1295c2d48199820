"""What SLURM says about our jobs: one thread asks sacct about all of them, and squeue about the rest.

submitit learns states from sacct alone and keeps a job UNKNOWN while sacct fails, so a job that
ends without a result (cancelled, timed out, killed) would be waited on forever. Here every watched
job is looked up in one sacct call per poll; the jobs sacct does not report (accounting down or
lagging behind the controller) are looked up with squeue, which knows jobs for MinJobAge after they end.
"""

from __future__ import annotations

import logging
import re
import subprocess
import threading
import time

log = logging.getLogger(__name__)

# Waiting to run: queued, requeued, or held until someone releases it.
PENDING = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SPECIAL_EXIT"})
RUNNING = frozenset(
    {"RUNNING", "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
)
# A preempted job, or one whose node was lost, is requeued a moment later when the cluster requeues
# such jobs (the default); it counts as ended only once it has stayed in that state this long.
SETTLING = frozenset({"PREEMPTED", "NODE_FAIL"})
PREEMPTED_SETTLE_S = 10.0


def base_state(state: str) -> str:
    """`CANCELLED by 0` -> `CANCELLED`."""
    return state.split(" ", 1)[0].rstrip("+")


def is_final(state: str, since: float) -> bool:
    """Whether a job in `state` (first seen at monotonic time `since`) has ended."""
    base = base_state(state)
    if base in SETTLING:
        return time.monotonic() - since >= PREEMPTED_SETTLE_S
    return bool(base) and base not in PENDING and base not in RUNNING and base != "UNKNOWN"


class StateTracker:
    """The latest SLURM state of each watched job id (`123` or array element `123_4`)."""

    def __init__(self, poll_s: float, command_timeout_s: float = 30.0) -> None:
        self.poll_s = poll_s
        self.command_timeout_s = command_timeout_s
        self._states: dict[str, tuple[str, float]] = {}  # job id -> (state, monotonic time first seen)
        self._watched: set[str] = set()
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._sacct_failing = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="slurm-states")
        self._thread.start()

    def watch(self, job_ids: list[str]) -> None:
        with self._changed:
            self._watched.update(job_ids)
        self._wake.set()

    def forget(self, job_id: str) -> None:
        with self._changed:
            self._watched.discard(job_id)
            self._states.pop(job_id, None)

    def state(self, job_id: str) -> tuple[str, float] | None:
        """(state, monotonic time it was first seen), or None while neither sacct nor squeue knows the job."""
        with self._changed:
            return self._states.get(job_id)

    def wait_for_update(self, timeout: float) -> None:
        """Block until the next poll has finished, or `timeout` seconds."""
        with self._changed:
            self._changed.wait(timeout)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=self.command_timeout_s + 5)

    def _run(self) -> None:
        while not self._closed.is_set():
            with self._changed:
                watched = sorted(self._watched)
            if watched:
                found, sacct_answered = query(watched, self.command_timeout_s)
                if sacct_answered == self._sacct_failing:
                    self._sacct_failing = not sacct_answered
                    log.warning(
                        "sacct %s", "answers again" if sacct_answered else "fails: states come from squeue"
                    )
                now = time.monotonic()
                with self._changed:
                    for job_id in watched:
                        if job_id in found and job_id in self._watched:
                            previous = self._states.get(job_id)
                            if previous is None or previous[0] != found[job_id]:
                                self._states[job_id] = (found[job_id], now)
                    self._changed.notify_all()
            self._wake.wait(self.poll_s)
            self._wake.clear()


def query(job_ids: list[str], timeout_s: float = 30.0) -> tuple[dict[str, str], bool]:
    """State by job id from sacct, completed by squeue for the ids sacct does not report; and whether
    sacct answered at all."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    sacct = command(
        ["sacct", "--allocations", "--parsable2", "--format=JobID,State", f"--jobs={','.join(arrays)}"],
        timeout_s,
    )
    found = _parse(sacct or "")
    missing = sorted({job_id.split("_")[0] for job_id in job_ids if job_id not in found})
    if missing:
        squeue = command(
            [
                "squeue",
                "--array",
                "--noheader",
                "--states=all",
                "--format=%i|%T",
                f"--jobs={','.join(missing)}",
            ],
            timeout_s,
        )
        found |= {k: v for k, v in _parse("JobID|State\n" + (squeue or "")).items() if k not in found}
    return found, sacct is not None


def command(argv: list[str], timeout_s: float) -> str | None:
    """The command's output, or None when it fails, is missing or does not answer in time."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.debug("%s failed: %s", argv[0], exc)
        return None
    if done.returncode != 0:
        log.debug("%s exited %d: %s", argv[0], done.returncode, done.stderr.strip())
        return None
    return done.stdout


def _parse(table: str) -> dict[str, str]:
    """JobID -> State from a `JobID|State` table (first line: the header); steps (`123.batch`) are
    skipped and a pending array's ranges (`123_[4-9%2]`, `123_[1,3]`) expand to each element."""
    states: dict[str, str] = {}
    for line in table.splitlines()[1:]:
        job_id, _, state = line.strip().partition("|")
        state = state.split("|")[0]
        if not job_id or "." in job_id:
            continue
        if ranges := re.fullmatch(r"(\d+)_\[([\d,-]+)(?:%\d+)?\]", job_id):
            for part in ranges.group(2).split(","):
                first, _, last = part.partition("-")
                states.update(
                    {f"{ranges.group(1)}_{i}": state for i in range(int(first), int(last or first) + 1)}
                )
        else:
            states[job_id] = state
    return states
