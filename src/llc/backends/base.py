"""The backend protocol: run cells somewhere, tell their states, cancel them.

A backend owns where a cell's work runs (a child process, a SLURM job, a Modal call) and enforces
the cell's timeout there, where the work can really be stopped. The sweep flow only submits cells
and waits for records; the same flow code runs on every backend.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, Protocol, Self

from llc.cells.cell import Cell
from llc.cells.record import CellRecord

log = logging.getLogger(__name__)


class BackendUnavailable(RuntimeError):
    """The backend cannot take work at all (no credentials, preflight failed, service unreachable);
    raised when it is opened, before any cell is submitted. The message says what to do."""


class JobState(StrEnum):
    PENDING = "pending"  # accepted, not started (queued on a cluster)
    RUNNING = "running"
    DONE = "done"  # a record is available, ok or error
    CANCELLED = "cancelled"


class Job(Protocol):
    """One submitted cell."""

    cell: Cell

    @property
    def state(self) -> JobState: ...

    @property
    def stage(self) -> str:
        """The last stage the cell reported (lock, erm, sampling, ...), for timeout and crash records."""
        ...

    def wait(self, timeout: float | None = None) -> CellRecord | None:
        """The record once the cell ends (a timed-out cell: a Timeout record); None if `timeout` passes."""
        ...

    def cancel(self) -> None:
        """Stop the cell's work now; waiting on it afterwards returns no record."""
        ...


class Backend(Protocol):
    """Runs at most `max_parallel` cells at once; a context manager that releases its resources on exit."""

    name: str
    max_parallel: int

    def submit_all(
        self,
        cells: list[Cell],
        runs_dir: Path,
        skip: bool,
        timeout_s: float | None,
        ledger: Path | None = None,
    ) -> None:
        """Hand over every cell a sweep must compute, before their tasks ask for them with `submit`; job ids
        go to the `ledger` file, and a backend whose jobs outlive the flow adopts the ones recorded there."""
        ...

    def submit(self, cell: Cell, runs_dir: Path, skip: bool, timeout_s: float | None) -> Job:
        """The cell's job: the one `submit_all` started for it the first time, else a new one."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


class Ledger:
    """The jobs a sweep submitted, one JSON line each (cell, job id, where its files are): a restarted
    sweep adopts the ones still queued or running, and `llc sweep cancel` finds them."""

    def __init__(self, path: Path, backend: str) -> None:
        self.path = path
        self.backend = backend

    def add(self, jobs: list[tuple[Cell, str, str]]) -> None:
        """Append (cell, job id, folder) entries; each line is whole once written."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(
            json.dumps({"cell": cell.name, "backend": self.backend, "job_id": job_id, "folder": folder})
            + "\n"
            for cell, job_id, folder in jobs
        )
        with self.path.open("a") as handle:
            handle.write(lines)

    def latest(self) -> dict[str, dict[str, str]]:
        """Each cell's last recorded job."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return {}
        entries = [json.loads(line) for line in text.splitlines() if line.endswith("}")]
        return {entry["cell"]: entry for entry in entries}


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


class CancelOnSignal:
    """While installed (from the main thread), SIGTERM and SIGINT first cancel a backend's work, then
    reach the handler that was there before (Prefect's, or the default). A cancelled flow run gets
    SIGTERM (Ctrl-C: SIGINT) in its main thread while the task threads wait on the work."""

    def __init__(self, cancel_all: Callable[[str], None], what: str) -> None:
        self._cancel_all = cancel_all
        self._what = what
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signal.getsignal(signum) != signal.SIG_IGN:  # e.g. SIGINT in a background job
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, previous in self._previous.items():
            if signal.getsignal(signum) == self._handle:
                signal.signal(signum, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        log.warning("signal %s: cancelling the %s of this sweep", name, self._what)
        self._cancel_all(f"the sweep was interrupted ({name})")
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
