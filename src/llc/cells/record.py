"""How a cell ended: one structured record per cell, ok or error, and which errors are worth a retry."""

from __future__ import annotations

import signal
import traceback
from typing import Any, Literal

from pydantic import BaseModel

from llc.cells.cell import Cell

TRACEBACK_LINES = 25

# Errors that can succeed when tried again: the machine, not the configuration, was the problem.
RETRYABLE: tuple[type[BaseException], ...] = (OSError, MemoryError, EOFError)


class CellRecord(BaseModel):
    """The outcome of one cell; what results.csv, errors.csv and the artifacts are built from."""

    cell: str
    status: Literal["ok", "error", "cancelled"]
    run_id: str
    family_id: str | None = None
    stage: str
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    duration_s: float = 0.0
    cached: bool = False
    attempts: int = 1
    retryable: bool = False
    run_dir: str = ""
    metrics: dict[str, Any] = {}

    @classmethod
    def ok(
        cls, cell: Cell, run_dir: str, metrics: dict[str, Any], duration_s: float, cached: bool
    ) -> CellRecord:
        return cls(
            cell=cell.name, status="ok", run_id=cell.run_id, family_id=cell.family_id, stage="done",
            duration_s=duration_s, cached=cached, run_dir=run_dir, metrics=metrics,
        )  # fmt: skip

    @classmethod
    def failed(
        cls,
        cell: Cell,
        stage: str,
        error_type: str,
        error: str,
        duration_s: float,
        retryable: bool,
        **extra: Any,
    ) -> CellRecord:
        return cls(
            cell=cell.name, status="error", run_id=cell.run_id, family_id=cell.family_id, stage=stage,
            error_type=error_type, error=error, duration_s=duration_s, retryable=retryable, **extra,
        )  # fmt: skip

    @classmethod
    def from_exception(cls, cell: Cell, exc: BaseException, stage: str, duration_s: float) -> CellRecord:
        tail = "".join(traceback.format_exception(exc)).splitlines()[-TRACEBACK_LINES:]
        return cls.failed(
            cell, stage, type(exc).__name__, str(exc) or repr(exc), duration_s, is_retryable(exc),
            traceback="\n".join(tail),
        )  # fmt: skip

    @classmethod
    def timeout(cls, cell: Cell, stage: str, timeout_s: float) -> CellRecord:
        message = f"no result after its timeout of {timeout_s:g} s (stage {stage}); its process was killed"
        return cls.failed(cell, stage, "Timeout", message, timeout_s, retryable=False)

    @classmethod
    def cancelled(cls, cell: Cell, stage: str, why: str) -> CellRecord:
        """A cell the sweep stopped (Ctrl-C, a cancelled flow run): not the cell's failure; never retried."""
        return cls(
            cell=cell.name, status="cancelled", run_id=cell.run_id, family_id=cell.family_id, stage=stage,
            error_type="Cancelled", error=why,
        )  # fmt: skip

    @classmethod
    def crashed(cls, cell: Cell, stage: str, returncode: int | None, duration_s: float) -> CellRecord:
        how = _exit_description(returncode)
        message = f"the process running the cell died ({how}) during stage {stage}"
        return cls.failed(cell, stage, "WorkerCrashed", message, duration_s, retryable=True)


class CellFailed(Exception):
    """Raised by a cell's task so Prefect marks it Failed and decides on a retry; carries the record."""

    def __init__(self, record: CellRecord) -> None:
        super().__init__(f"{record.cell}: {record.error_type}: {record.error}")
        self.record = record


def is_retryable(exc: BaseException) -> bool:
    """An exception may set `retryable` itself; otherwise OS-level and memory errors are retried."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return isinstance(exc, RETRYABLE) or "OutOfMemory" in type(exc).__name__


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "no exit status"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
