"""The backend protocol: run cells somewhere, tell their states, cancel them.

A backend owns where a cell's work runs (a child process, a SLURM job, a Modal call) and enforces
the cell's timeout there, where the work can really be stopped. The sweep flow only submits cells
and waits for records; the same flow code runs on every backend.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from llc.sweeps.cell import Cell
from llc.sweeps.record import CellRecord


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

    def submit(self, cell: Cell, runs_dir: Path, skip: bool, timeout_s: float | None) -> Job: ...

    def cancel_all(self, why: str) -> None:
        """Stop every cell's work now (a Ctrl-C, a cancelled flow run); no new cell starts afterwards."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


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
