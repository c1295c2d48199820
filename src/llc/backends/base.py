"""The backend lifecycle: run cells somewhere, tell their states, cancel them.

A backend owns where a cell's work runs (a child process, a SLURM job, a Modal call) and enforces
the cell's timeout there, where the work can really be stopped. The sweep flow only hands over cells
and waits for records; the same flow code runs on every backend.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel

from llc.cells.cell import Cell
from llc.cells.record import CellRecord

Recorded = dict[str, dict[str, str]]  # a ledger's entries by cell name


class BackendUnavailable(RuntimeError):
    """The backend cannot take work at all (no credentials, preflight failed, service unreachable);
    raised when it is opened, before any cell is submitted. The message says what to do."""


class Cancelled(RuntimeError):
    """The backend was told to stop (`cancel_all`): it takes no more cells."""


class JobState(StrEnum):
    PENDING = "pending"  # accepted, not started (queued on a cluster)
    RUNNING = "running"
    DONE = "done"  # a record is available, ok or error
    CANCELLED = "cancelled"


class Backend:
    """The lifecycle every backend shares, after submitit's Executor: option checks, `max_parallel`
    slots, jobs started ahead by `submit_all`, the ledger, cancel-all (`llc.sweeps.interrupt` calls it on
    SIGINT/SIGTERM) and closing. A backend supplies `_start` (submit cells, return their jobs) and,
    where it has them, `_start_all` (cells submitted before their tasks ask), `_adopt` and `_stop_all`."""

    name: ClassVar[str]
    label: ClassVar[str]  # how messages name it: "SLURM"
    options_model: ClassVar[type[BaseModel] | None] = None

    def __init__(self, max_parallel: int, threads_per_cell: int | None = None, **options: Any) -> None:
        known = list(self.options_model.model_fields) if self.options_model else []
        if unknown := sorted(set(options) - set(known)):
            raise TypeError(f"unknown {self.label} option(s) {unknown}; known: {', '.join(known) or 'none'}")
        given = {key: value for key, value in options.items() if value is not None}
        self.options: Any = self.options_model(**given) if self.options_model else None
        self.max_parallel = max_parallel
        self.threads_per_cell = threads_per_cell
        self.ledger: Ledger | None = None
        self._slots = threading.BoundedSemaphore(max_parallel)
        self._active: set[Job] = set()
        self._ahead: dict[str, Job] = {}  # by cell name: started by submit_all, not yet asked for
        self._lock = threading.RLock()  # cancel_all may run in a signal handler
        self._closed = threading.Event()
        self._cancelled = ""  # why cancel_all stopped the backend

    def submit_all(
        self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None, ledger: Path
    ) -> None:
        """Hand over every cell a sweep must compute before their tasks ask for them; job ids go to the
        `ledger` file, and jobs recorded there that still run are adopted instead of submitted again."""
        if self._closed.is_set():  # stopped already: each task ends its cell as cancelled
            return
        self.ledger = Ledger(ledger, self.name)
        adopted = self._adopt(self.ledger.latest(), cells, Path(runs_dir), timeout_s)
        with self._lock:
            self._active.update(adopted)
        taken = {job.cell.name for job in adopted}
        left = [cell for cell in cells if cell.name not in taken]
        jobs = adopted + self._start_all(left, Path(runs_dir), skip, timeout_s)
        with self._lock:
            self._ahead.update((job.cell.name, job) for job in jobs)

    def submit(self, cell: Cell, runs_dir: Path, skip: bool, timeout_s: float | None) -> Job:
        """The cell's job: the one `submit_all` started the first time, else a new one in a free slot."""
        with self._lock:
            job = self._ahead.pop(cell.name, None)
        if job is not None:
            return job
        while not self._slots.acquire(timeout=0.5):
            self._refuse_if_closed()
        try:
            self._refuse_if_closed()
            (job,) = self._start([cell], Path(runs_dir), skip, timeout_s)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            job.holds_slot = job.live
        if not job.holds_slot:  # it ended at once (a refused submission)
            self._slots.release()
        return job

    def _refuse_if_closed(self) -> None:
        if self._closed.is_set():
            raise Cancelled(self._cancelled or f"the {self.label} backend is closed")

    def release(self, job: Job) -> None:
        """A job that ended or was cancelled is no longer tracked, and gives back its slot (once)."""
        with self._lock:
            self._active.discard(job)
            held, job.holds_slot = job.holds_slot, False
        if held:
            self._slots.release()

    def cancel_all(self, why: str) -> None:
        """Stop every queued or running job, each ending with a record saying why; nothing starts after."""
        self._cancelled = self._cancelled or why
        self._closed.set()
        with self._lock:
            jobs = [job for job in self._active if job.live]
            self._ahead.clear()
        self._stop_all(jobs)
        for job in jobs:
            job.end(job._interrupted(why))

    def close(self) -> None:
        """Cancel what still runs and release the backend's own resources."""
        self.cancel_all(f"the {self.label} backend was closed")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track(self, jobs: list[Job], folder: str = "") -> None:
        """Jobs just submitted: cancelled by `cancel_all`; those with an id go to the ledger."""
        with self._lock:
            self._active.update(jobs)
        if self.ledger is not None:
            self.ledger.add([job for job in jobs if job.job_id], folder)
        if self._closed.is_set():  # closed while they were submitted: they were not there to cancel
            self.cancel_all(f"the {self.label} backend was closed while the cells were submitted")

    def _start(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        raise NotImplementedError

    def _start_all(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        """By default nothing is started ahead: each cell is submitted when its task asks, in a slot."""
        return []

    def _adopt(
        self, recorded: Recorded, cells: list[Cell], runs_dir: Path, timeout_s: float | None
    ) -> list[Job]:
        """Jobs of an earlier run of the sweep (`recorded` by cell name) still worth waiting for."""
        return []

    def _stop_all(self, jobs: list[Job]) -> None:
        for job in jobs:
            job._stop()


class Job:
    """One submitted cell, after submitit's Job: its state and stage, a wait that ends by the cell's
    timeout (running time only, across requeues) or by `start_limit_s` spent waiting to start, cancel.
    A backend's job supplies `_poll` (wait a little for news), `_stop` (stop the work), `_not_started`
    (the record of a job stopped at its start limit) and, where it says more, `_interrupted`."""

    cancelled_type: ClassVar[str] = "Cancelled"
    start_limit_s: float | None = None  # how long it may wait to start; None: as long as it takes

    def __init__(self, backend: Backend, cell: Cell, timeout_s: float | None) -> None:
        self.cell = cell
        self.job_id = ""  # the backend's own, once it has one
        self.holds_slot = False  # one of the backend's max_parallel slots, until released
        self._backend = backend
        self._timeout_s = timeout_s
        self.state = JobState.PENDING  # set by the job alone
        self._stage = "queued"
        self._record: CellRecord | None = None
        self._submitted = time.monotonic()
        self._ran_s = 0.0  # running time before the last requeue
        self._running_since: float | None = None
        self._end_lock = threading.Lock()

    @property
    def stage(self) -> str:
        """The last stage the cell reported (lock, erm, sampling, ...), for timeout and crash records."""
        return self._stage

    @property
    def live(self) -> bool:
        return self.state in (JobState.PENDING, JobState.RUNNING)

    def wait(self, timeout: float | None = None) -> CellRecord | None:
        """The record once the cell ends (a timed-out cell: a Timeout record); None if `timeout` passes."""
        until = None if timeout is None else time.monotonic() + timeout
        while self.live:
            due = [t for t in (until, self._deadline()) if t is not None]
            left = min(due) - time.monotonic() if due else None
            if until is not None and until <= time.monotonic():
                return None
            record = self._poll(None if left is None else max(0.0, left))
            if record is None and (record := self._overdue()) is not None:
                self._stop()
            if record is not None:
                self.end(record)
        return self._record

    def cancel(self) -> None:
        """Stop the cell's work now; waiting on it afterwards returns no record."""
        with self._end_lock:
            if not self.live:
                return
            self.state = JobState.CANCELLED
        self._stop()
        self._backend.release(self)

    def end(self, record: CellRecord) -> None:
        """The cell's outcome; only the first one counts."""
        with self._end_lock:
            if not self.live:
                return
            self._record, self.state = record, JobState.DONE
        self._backend.release(self)

    def _running(self, since: float) -> None:
        """The work runs (again) from monotonic time `since`: the cell's clock runs."""
        with self._end_lock:
            if self.live:
                self.state = JobState.RUNNING
        if self._running_since is None:
            self._running_since = since

    def _queued(self, since: float) -> None:
        """The work waits (again) from `since`, e.g. requeued: queueing time is free."""
        with self._end_lock:
            if self.live:
                self.state = JobState.PENDING
        if self._running_since is not None:
            self._ran_s += since - self._running_since
            self._running_since = None

    def _ran(self) -> float:
        running = time.monotonic() - self._running_since if self._running_since is not None else 0.0
        return self._ran_s + running

    def _deadline(self) -> float | None:
        """When the cell's timeout (running) or its start limit (waiting) runs out."""
        if self._running_since is not None:
            return self._running_since + self._timeout_s - self._ran_s if self._timeout_s else None
        return self._submitted + self._ran_s + self.start_limit_s if self.start_limit_s else None

    def _overdue(self) -> CellRecord | None:
        """The record of a job past its deadline (it is then stopped), else None."""
        if self._timeout_s and self._ran() >= self._timeout_s:
            return CellRecord.timeout(self.cell, self.stage, self._timeout_s)
        waited = time.monotonic() - self._submitted - self._ran_s
        if self._running_since is None and self.start_limit_s and waited >= self.start_limit_s:
            return self._not_started()
        return None

    def _poll(self, timeout: float | None) -> CellRecord | None:
        """Wait at most `timeout` s (None: until news) for the job to move; its record once it ended."""
        raise NotImplementedError

    def _stop(self) -> None:
        raise NotImplementedError

    def _not_started(self) -> CellRecord:
        raise NotImplementedError

    def _interrupted(self, why: str) -> CellRecord:
        return CellRecord.failed(self.cell, self.stage, self.cancelled_type, why, self._ran(), False)


@dataclass(frozen=True)
class Ledger:
    """The jobs a sweep submitted, one JSON line each (cell, job id, and a `folder`: SLURM's job folder,
    a Modal call's progress ticket): a restarted sweep adopts the ones still queued or running, and
    `llc sweep cancel` finds them."""

    path: Path
    backend: str  # whose jobs it adds and reads; "" reads all

    def add(self, jobs: list[Job], folder: str) -> None:
        """Append one entry a job (its files in `folder`); each line is whole once written."""
        entries = [
            {"cell": j.cell.name, "backend": self.backend, "job_id": j.job_id, "folder": folder} for j in jobs
        ]
        if not entries:  # local cells have no job ids: no ledger, so the sweep does not look remote
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as handle:
            handle.write("".join(json.dumps(entry) + "\n" for entry in entries))

    def latest(self) -> Recorded:
        """Each cell's last recorded job (of this ledger's backend, when it has one)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        entries = [json.loads(line) for line in text.splitlines() if line.endswith("}")]
        return {e["cell"]: e for e in entries if e["backend"] == self.backend or not self.backend}


def run_on(backend: Backend, cell: Cell, runs_dir: Path, skip: bool, timeout_s: float | None) -> CellRecord:
    """Submit one cell and block for its record; the job is cancelled if the caller is interrupted."""
    job = backend.submit(cell, runs_dir, skip, timeout_s)
    try:
        record = job.wait()
    finally:
        if job.state not in (JobState.DONE, JobState.CANCELLED):
            job.cancel()
    if record is None:
        raise RuntimeError(f"backend {backend.name} returned no record for cell {cell.name}")
    return record
