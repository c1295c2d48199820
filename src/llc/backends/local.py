"""The local backend: each cell runs in a worker process of this machine, killed at the cell's timeout.

Workers are reused from cell to cell (a Python start-up per cell would dominate short cells) and
replaced when one is killed or dies. A worker speaks JSON lines: a request on stdin, stage reports
and then the record on its stdout. `python -m llc.backends.local` is the worker.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llc.backends.base import Backend, Job
from llc.cells.cell import Cell
from llc.cells.execute import run_cell
from llc.cells.record import CellRecord

_EOF: dict[str, Any] = {}
# A worker has this long to begin a cell (its Python and torch start-up on a busy machine); the cell's
# own timeout counts from the moment it begins, so a slow start never kills a healthy cell.
START_LIMIT_S = 120.0


class LocalBackend(Backend):
    """Up to `max_parallel` worker processes, each using `threads_per_cell` CPU threads."""

    name, label = "local", "local"

    def __init__(self, max_parallel: int, threads_per_cell: int | None = None, **options: Any) -> None:
        threads = threads_per_cell or max(1, (os.cpu_count() or 1) // max_parallel)
        super().__init__(max_parallel, threads, **options)
        self._idle: list[_Worker] = []
        self._all: set[_Worker] = set()

    def _start(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        (cell,) = cells
        request = {"cell": cell.model_dump(mode="json"), "runs_dir": str(runs_dir), "skip": skip}
        worker = self._take()
        try:
            worker.send(request)
        except OSError:  # it died while idle: a fresh one gets the cell
            self.discard(worker)
            worker = self._take()
            worker.send(request)
        job = LocalJob(self, worker, cell, timeout_s)
        self._track([job])
        return [job]

    def give_back(self, worker: _Worker) -> None:
        """A worker that finished its cell goes back to the pool."""
        with self._lock:
            self._idle.append(worker)

    def discard(self, worker: _Worker) -> None:
        """A worker that was killed or died is dropped (and killed, to be sure)."""
        worker.kill()
        with self._lock:
            self._all.discard(worker)

    def close(self) -> None:
        """Cancel what still runs, then stop the idle workers."""
        super().close()
        with self._lock:
            workers, self._idle, self._all = list(self._all), [], set()
        for worker in workers:
            worker.stop()

    def _take(self) -> _Worker:
        with self._lock:
            while self._idle:
                worker = self._idle.pop()
                if worker.proc.poll() is None:  # alive
                    return worker
                self._all.discard(worker)
        worker = _Worker(self.threads_per_cell or 1)
        with self._lock:
            self._all.add(worker)
        return worker


class LocalJob(Job):
    """A cell running in one worker; `wait` reads its stage reports and its record."""

    start_limit_s = START_LIMIT_S

    def __init__(self, backend: LocalBackend, worker: _Worker, cell: Cell, timeout_s: float | None) -> None:
        super().__init__(backend, cell, timeout_s)
        self._local = backend
        self._worker: _Worker | None = worker
        self._reported = False  # the worker sent the record: it can take another cell
        self._stage = "start"

    def _poll(self, timeout: float | None) -> CellRecord | None:
        until = None if timeout is None else time.monotonic() + timeout
        if (worker := self._worker) is None or (message := worker.receive(until)) is None:
            return None
        if message is _EOF:
            return CellRecord.crashed(self.cell, self._stage, worker.returncode(), self._ran())
        if "stage" in message:
            self._running(time.monotonic())  # the cell begins: its own timeout starts now
            self._stage = message["stage"]
            return None
        self._reported = True
        return CellRecord.model_validate(message["record"])

    def _stop(self) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            self._local.discard(worker)

    def _not_started(self) -> CellRecord:
        why = f"its worker process did not begin the cell within {START_LIMIT_S:g} s; it was killed"
        return CellRecord.failed(self.cell, "start", "WorkerStart", why, START_LIMIT_S, True)

    def end(self, record: CellRecord) -> None:
        super().end(record)
        if (worker := self._worker) is not None:  # it can take another cell once it sent the record
            self._worker = None
            (self._local.give_back if self._reported else self._local.discard)(worker)


class _Worker:
    """One worker process in its own session, so killing its group also stops anything it started."""

    def __init__(self, threads: int) -> None:
        env = {
            **os.environ,
            # The parent's import path, as multiprocessing's spawn passes it: its experiments import here.
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
        }
        argv, pipe = [sys.executable, "-m", "llc.backends.local"], subprocess.PIPE
        self.proc = subprocess.Popen(argv, stdin=pipe, stdout=pipe, env=env, start_new_session=True)
        self._buffer = b""

    def returncode(self) -> int | None:
        try:
            return self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            return None

    def send(self, request: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self, until: float | None) -> dict[str, Any] | None:
        """The next message; None when `until` passes first; _EOF when the worker is gone."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buffer:
            left = None if until is None else max(0.0, until - time.monotonic())
            if not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return _EOF
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return json.loads(line)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self._close_pipes()

    def stop(self) -> None:
        """Ask an idle worker to exit (end of its input), then make sure it did."""
        self._close_pipes()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.kill()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()


def serve() -> None:
    """Worker main loop: one request per stdin line until stdin closes."""
    channel = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # an experiment's prints go to stderr, never into the protocol
    _die_with_parent()

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")

    for line in sys.stdin:
        request = json.loads(line)
        cell, runs_dir = Cell.model_validate(request["cell"]), Path(request["runs_dir"])
        record = run_cell(cell, runs_dir, request["skip"], lambda stage: send({"stage": stage}))
        send({"record": record.model_dump(mode="json")})


def _die_with_parent() -> None:
    """If the sweep process is killed (SIGKILL leaves no chance to clean up), its workers stop too."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.killpg(0, signal.SIGKILL)

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


if __name__ == "__main__":
    serve()
