"""The SLURM backend: each cell is one SLURM job, submitted through submitit as part of a job array.

Cells submitted within `batch_window_s` of each other leave in one sbatch (a job array); each cell's
Prefect task then waits on its own array element. Every job ends in a record within seconds of
the event, whatever happens to it: its result, or an error record with the SLURM state, the paths
of its logs and the tail of its stderr when SLURM cancels it, times it out, kills it for memory or
loses its node. A cell is Checkpointable: at its time limit or on preemption the job is requeued (up
to `max_requeues` times) and the experiment resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llc.backends.base import JobState
from llc.backends.slurm_states import PENDING, RUNNING, StateTracker, base_state, is_final
from llc.sweeps.cell import Cell
from llc.sweeps.execute import run_cell
from llc.sweeps.record import TRACEBACK_LINES, CellRecord


@contextlib.contextmanager
def _submitit_logging_off() -> Iterator[None]:
    """submitit configures logging when imported (`logging.config.dictConfig`), which closes every
    handler already installed, Prefect's too, and deadlocks on Prefect's log worker inside a flow run.
    Its jobs, which inherit the environment, still log as usual."""
    before = os.environ.get("SUBMITIT_LOG_LEVEL")
    os.environ["SUBMITIT_LOG_LEVEL"] = "NOCONFIG"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SUBMITIT_LOG_LEVEL"]
        else:
            os.environ["SUBMITIT_LOG_LEVEL"] = before


with _submitit_logging_off():
    import submitit
    from submitit.core import utils as submitit_utils
    from submitit.helpers import Checkpointable

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a waiting cell looks for its result file between state polls
RESULT_GRACE_S = 15.0  # a COMPLETED job's result may take this long to show on a shared filesystem
FAILED_GRACE_S = 2.0  # the same for a job that ended otherwise (its result, if any, was written first)
MEMORY_KILL_MARKS = ("exceeded memory limit", "exceeded job memory limit", "oom-kill", "oom_kill")


class SlurmOptions(BaseSettings):
    """How cells are submitted; each option also reads LLC_SLURM_<NAME> (and .env); arguments win."""

    model_config = SettingsConfigDict(env_prefix="LLC_SLURM_", env_file=".env", extra="ignore")

    partition: str | None = Field(None, description="partition (sbatch --partition); default: the cluster's")
    account: str | None = Field(None, description="account charged (sbatch --account)")
    qos: str | None = Field(None, description="quality of service (sbatch --qos)")
    timeout_min: int | None = Field(
        None, ge=1, description="time limit of one job in minutes; default: the cell timeout plus a minute"
    )
    cpus: int = Field(1, ge=1, description="CPUs per cell (sbatch --cpus-per-task)")
    mem_gb: float | None = Field(None, gt=0, description="memory per cell in GB; default: the cluster's")
    gpus: int | None = Field(
        None,
        ge=0,
        description="GPUs per cell; default: one when the cell's gpu_mode is vectorized or sequential",
    )
    signal_delay_s: int = Field(
        90, ge=1, description="seconds before the time limit to checkpoint and requeue (at most half of it)"
    )
    max_requeues: int = Field(3, ge=0, description="time limits a cell may hit and be requeued")
    array_parallelism: int = Field(256, ge=1, description="elements of one job array running at once")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each cell")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="further sbatch options, e.g. constraint=a100 (true: a bare flag, e.g. no-requeue)",
    )
    python: str | None = Field(None, description="python command on the nodes; default: this interpreter")
    folder: Path | None = Field(None, description="submitit's logs and pickles; default: RUNS_DIR/.slurm/...")
    job_name: str = Field("llc", pattern=r"^[\w.-]+$", description="job name prefix; a session id follows")
    poll_s: float = Field(2.0, gt=0, description="how often sacct (or squeue) is asked about running cells")
    batch_window_s: float = Field(0.5, ge=0, description="cells submitted this close together share an array")
    queue_timeout_s: float | None = Field(
        None, gt=0, description="a cell still queued after this is cancelled; default: wait for the queue"
    )
    lost_after_s: float = Field(
        300.0, gt=0, description="a job neither sacct nor squeue knows for this long is recorded as lost"
    )


class SlurmSubmitError(RuntimeError):
    """sbatch refused the cells; retryable when the controller was only busy or unreachable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        transient = ("timed out", "unable to contact", "temporarily unavailable", "connection refused")
        self.retryable = any(mark in message.lower() for mark in transient)


class SlurmBackend:
    """Submits cells as job arrays, at most `max_parallel` queued or running at once, and tracks them;
    use it as a context manager (see `close`)."""

    name = "slurm"

    def __init__(self, max_parallel: int, threads_per_cell: int | None = None, **options: Any) -> None:
        self.max_parallel = max_parallel
        self.threads_per_cell = threads_per_cell
        if unknown := sorted(set(options) - set(SlurmOptions.model_fields)):
            raise TypeError(
                f"unknown SLURM option(s) {unknown}; known: {', '.join(SlurmOptions.model_fields)}"
            )
        self.options = SlurmOptions(**{k: v for k, v in options.items() if v is not None})
        self.session = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.job_name = f"{self.options.job_name}-{self.session[-6:]}"
        self.states = StateTracker(self.options.poll_s)
        self._batcher = _Batcher(self._submit_batch, self.options.batch_window_s)
        self._active: dict[str, SlurmJob] = {}
        self._lock = threading.RLock()  # cancel_all may run in a signal handler
        self._slots = threading.BoundedSemaphore(max_parallel)  # jobs queued or running at once
        self._closed = threading.Event()

    def submit(self, cell: Cell, runs_dir: Path, skip: bool, timeout_s: float | None) -> SlurmJob:
        """Queue the cell for the next array; returns once its sbatch has been accepted."""
        folder = self.options.folder or Path(runs_dir) / ".slurm"
        request = _Request(
            cell, Path(runs_dir), skip, timeout_s, folder / self.session, self._parameters(cell, timeout_s)
        )
        while not self._slots.acquire(timeout=CHECK_S):
            if self._closed.is_set():
                raise RuntimeError("the SLURM backend is closed")
        try:
            return self._batcher.submit(request)
        except BaseException:  # refused, closed, or the caller interrupted (a Prefect task timeout)
            self._abandon(request)
            raise

    def close(self) -> None:
        """Cancel the jobs still queued or running (one scancel), stop polling."""
        self.cancel_all()
        self.states.close()

    def cancel_all(self, why: str = "the SLURM backend was closed") -> None:
        """scancel every job still queued or running; each ends with a SlurmCancelled record saying why."""
        self._closed.set()
        self._batcher.close()
        with self._lock:
            jobs, self._active = list(self._active.values()), {}
        scancel([job.job_id for job in jobs])
        for job in jobs:
            job.interrupt(why)
            self.states.forget(job.job_id)
            self._slots.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def release(self, job: SlurmJob) -> None:
        """A job that ended or was cancelled is no longer tracked."""
        with self._lock:
            tracked = self._active.pop(job.job_id, None) is not None
        self.states.forget(job.job_id)
        if tracked:
            self._slots.release()

    def _abandon(self, request: _Request) -> None:
        """Nobody will wait for this cell: cancel its job if it has one, else free its place now."""
        with self._lock:
            request.abandoned = True
            job = request.job
        if job is not None:
            job.cancel()
        else:
            self._slots.release()

    def _parameters(self, cell: Cell, timeout_s: float | None) -> dict[str, Any]:
        """submitit's SlurmExecutor parameters for this cell; cells with equal parameters share an array."""
        o = self.options
        limit = o.timeout_min or (math.ceil(timeout_s / 60) + 1 if timeout_s else 60)
        threads = self.threads_per_cell or o.cpus
        params = {
            "job_name": self.job_name,
            "time": limit,
            "cpus_per_task": o.cpus,
            # At most half the limit: a signal due at the start would requeue the job at once.
            "signal_delay_s": min(o.signal_delay_s, limit * 30),
            "array_parallelism": o.array_parallelism,
            "setup": [f"export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}", *o.setup],
            "partition": o.partition,
            "account": o.account,
            "qos": o.qos,
            "mem": f"{int(o.mem_gb * 1024)}MB" if o.mem_gb else None,
            "gpus_per_node": self._gpus(cell) or None,
            "additional_parameters": dict(o.sbatch) or None,
        }
        return {k: v for k, v in params.items() if v is not None}

    def _gpus(self, cell: Cell) -> int:
        if self.options.gpus is not None:
            return self.options.gpus
        wants_gpu = cell.config.get("gpu_mode") in ("vectorized", "sequential")
        return int(wants_gpu and cell.config.get("device", "auto") != "cpu")

    def _submit_batch(self, requests: list[_Request]) -> None:
        """One sbatch per group of requests with equal parameters and folder; fills in each request."""
        groups: dict[str, list[_Request]] = {}
        for request in requests:
            key = json.dumps([str(request.folder), request.parameters], sort_keys=True)
            groups.setdefault(key, []).append(request)
        import_path = [os.path.abspath(p) for p in sys.path if p]
        for group in groups.values():
            first = group[0]
            try:
                executor = submitit.SlurmExecutor(
                    first.folder, max_num_timeout=self.options.max_requeues, python=self.options.python
                )
                executor.update_parameters(**first.parameters)
                calls = [CellCall(r.cell, r.runs_dir, r.skip, import_path) for r in group]
                jobs = executor.submit_array(calls)
            except Exception as exc:
                hint = ""
                if "gres" in str(exc).lower() and first.parameters.get("gpus_per_node"):
                    hint = (
                        "; the cells ask for a GPU (gpu_mode vectorized or sequential): on a partition"
                        " without GPUs pass --backend-option gpus=0 (or --set device=cpu)"
                    )
                error = SlurmSubmitError(f"sbatch failed for {len(group)} cell(s): {exc}{hint}")
                for request in group:
                    request.error = error
                    request.done.set()
                continue
            abandoned = []
            for request, job in zip(group, jobs, strict=True):
                with self._lock:
                    if request.abandoned:
                        abandoned.append(job.job_id)
                        continue
                    request.job = SlurmJob(self, job, request.cell, request.timeout_s)
                    self._active[job.job_id] = request.job
            scancel(abandoned)
            self.states.watch([job.job_id for job in jobs if job.job_id not in abandoned])
            if self._closed.is_set():  # closed while sbatch ran: these jobs were not there to cancel
                self.cancel_all("the SLURM backend was closed while the cells were submitted")
            for request in group:
                request.done.set()


class SlurmJob:
    """One cell's SLURM job (an array element); `wait` returns its record, never waiting forever."""

    def __init__(
        self, backend: SlurmBackend, job: submitit.Job[Any], cell: Cell, timeout_s: float | None
    ) -> None:
        self.cell = cell
        self.job_id: str = job.job_id
        self.paths = job.paths
        self._backend = backend
        self._timeout_s = timeout_s
        self._state = JobState.PENDING
        self._record: CellRecord | None = None
        self._submitted = self._last_known = time.monotonic()
        self._ran_s = 0.0  # seconds in earlier runs (before a requeue)
        self._running_since: float | None = None

    @property
    def state(self) -> JobState:
        return self._state

    @property
    def stage(self) -> str:
        """The stage the job last reported; `queued` before it started."""
        try:
            return self._stage_file.read_text().strip() or "start"
        except OSError:
            return "queued" if self._running_since is None and not self._ran_s else "start"

    @property
    def _stage_file(self) -> Path:
        return self.paths.folder / f"{self.job_id}.stage"

    def wait(self, timeout: float | None = None) -> CellRecord | None:
        until = None if timeout is None else time.monotonic() + timeout
        while self._state in (JobState.PENDING, JobState.RUNNING):
            record = self._check()
            if record is not None:
                self._end(record)
                break
            left = CHECK_S if until is None else min(CHECK_S, until - time.monotonic())
            if left <= 0:
                return None
            self._backend.states.wait_for_update(left)
        return self._record

    def cancel(self) -> None:
        if self._state in (JobState.PENDING, JobState.RUNNING):
            self._state = JobState.CANCELLED
            scancel([self.job_id])
            self._backend.release(self)

    def interrupt(self, why: str) -> None:
        """The backend cancelled the job (already scancelled): its waiter gets a record saying why."""
        if self._state in (JobState.PENDING, JobState.RUNNING):
            self._record = self._stopped_record("SlurmCancelled", f"was cancelled: {why}", retryable=False)
            self._state = JobState.DONE

    def _check(self) -> CellRecord | None:
        """The record if the job has ended (or must be stopped), else None; updates state and clocks."""
        if self.paths.result_pickle.exists():
            return self._result()
        now = time.monotonic()
        known = self._backend.states.state(self.job_id)
        if known is not None:
            self._last_known = now
            state, since = known
            self._clock(base_state(state), since)
            if is_final(state, since):
                return self._ended(state)
        elif now - self._last_known > self._backend.options.lost_after_s:
            return self._stopped(
                "SlurmJobLost",
                f"neither sacct nor squeue has known it for {now - self._last_known:.0f} s",
                True,
            )
        if self._timeout_s and self._ran() >= self._timeout_s:
            scancel([self.job_id])
            return CellRecord.timeout(self.cell, self.stage, self._timeout_s)
        queue_timeout = self._backend.options.queue_timeout_s
        if (
            queue_timeout
            and self._state is JobState.PENDING
            and now - self._submitted - self._ran() >= queue_timeout
        ):
            return self._stopped("SlurmQueueTimeout", f"still queued after {queue_timeout:g} s", False)
        return None

    def _clock(self, base: str, since: float) -> None:
        """Running time counts only while SLURM runs the job: queueing, before or after a requeue, is free."""
        if base in RUNNING:
            self._state = JobState.RUNNING
            if self._running_since is None:
                self._running_since = since
        elif base in PENDING:
            self._state = JobState.PENDING
            if self._running_since is not None:
                self._ran_s += since - self._running_since
                self._running_since = None

    def _ran(self) -> float:
        running = time.monotonic() - self._running_since if self._running_since is not None else 0.0
        return self._ran_s + running

    def _ended(self, state: str) -> CellRecord:
        """An ended job's result if it wrote one (the filesystem gets a moment to show it), else an error."""
        grace = RESULT_GRACE_S if base_state(state) == "COMPLETED" else FAILED_GRACE_S
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            _refresh_directory(self.paths.folder)
            if self.paths.result_pickle.exists():
                return self._result()
            time.sleep(0.2)
        return self._slurm_error(state)

    def _result(self) -> CellRecord:
        outcome, value = submitit_utils.pickle_load(self.paths.result_pickle)
        if outcome == "success" and isinstance(value, CellRecord):
            if value.error_type == "UncompletedJobError":  # submitit gave up requeueing at the time limit
                return self._slurm_error("TIMEOUT", detail=f"signalled at its time limit; {value.error}")
            return value
        lines = str(value).strip().splitlines() or ["no traceback"]
        error_type, _, message = lines[-1].partition(": ")
        return CellRecord.failed(
            self.cell, self.stage, error_type.rsplit(".", 1)[-1] or "SlurmJobError", message or lines[-1],
            self._ran(), retryable=False, traceback="\n".join(lines[-TRACEBACK_LINES:]),
        )  # fmt: skip

    def _slurm_error(self, state: str, detail: str = "") -> CellRecord:
        """An error record naming the SLURM state, the log paths and the stderr tail."""
        tail = _tail(self.paths.stderr)
        kind = base_state(state)
        if kind != "OUT_OF_MEMORY" and any(mark in tail.lower() for mark in MEMORY_KILL_MARKS):
            kind, detail = "OUT_OF_MEMORY", detail or "killed for exceeding its memory limit; raise mem_gb"
        # Machine trouble is worth another try; a cancellation, time limit or memory limit is not.
        retryable = kind in ("FAILED", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED")
        message = (
            f"SLURM job {self.job_id} ended {state}{f' ({detail})' if detail else ''} at stage {self.stage}; "
            f"stdout: {self.paths.stdout}; stderr: {self.paths.stderr}"
        )
        error_type = "Slurm" + "".join(word.capitalize() for word in kind.split("_"))
        return CellRecord.failed(
            self.cell, self.stage, error_type, message, self._ran(), retryable, traceback=tail
        )

    def _stopped(self, error_type: str, why: str, retryable: bool) -> CellRecord:
        scancel([self.job_id])
        return self._stopped_record(error_type, f"{why}; it was cancelled", retryable)

    def _stopped_record(self, error_type: str, why: str, retryable: bool) -> CellRecord:
        message = f"SLURM job {self.job_id} {why}; stdout: {self.paths.stdout}; stderr: {self.paths.stderr}"
        tail = _tail(self.paths.stderr)
        return CellRecord.failed(
            self.cell, self.stage, error_type, message, self._ran(), retryable, traceback=tail
        )

    def _end(self, record: CellRecord) -> None:
        self._record, self._state = record, JobState.DONE
        self._backend.release(self)


class CellCall(Checkpointable):
    """What a job runs: one cell. At the time limit or on preemption submitit requeues it as it is,
    and the experiment resumes from its own checkpoint."""

    def __init__(self, cell: Cell, runs_dir: Path, skip: bool, import_path: list[str]) -> None:
        self.cell, self.runs_dir, self.skip, self.import_path = cell, runs_dir, skip, import_path

    def __call__(self) -> CellRecord:
        # The submitting process's import path, so experiments found there import here too.
        sys.path.extend(p for p in self.import_path if p not in sys.path and os.path.isdir(p))
        stage_file = Path(os.environ["SUBMITIT_FOLDER"]) / f"{submitit.JobEnvironment().job_id}.stage"
        return run_cell(self.cell, self.runs_dir, self.skip, lambda stage: _write(stage_file, stage))


@dataclass
class _Request:
    cell: Cell
    runs_dir: Path
    skip: bool
    timeout_s: float | None
    folder: Path
    parameters: dict[str, Any]
    job: SlurmJob | None = None
    error: BaseException | None = None
    abandoned: bool = False
    done: threading.Event = field(default_factory=threading.Event)


class _Batcher:
    """Gathers submissions until none has come for `window_s` (at most 10 windows), then sends them."""

    def __init__(self, send: Callable[[list[_Request]], None], window_s: float) -> None:
        self._send = send
        self._window_s = window_s
        self._queue: list[_Request] = []
        self._last = 0.0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True, name="slurm-submit")
        self._thread.start()

    def submit(self, request: _Request) -> SlurmJob:
        with self._cond:
            if self._closed:
                raise RuntimeError("the SLURM backend is closed")
            self._queue.append(request)
            self._last = time.monotonic()
            self._cond.notify_all()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.job is not None
        return request.job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            dropped, self._queue = self._queue, []
            self._cond.notify_all()
        for request in dropped:
            request.error = RuntimeError("the SLURM backend closed before the cell was submitted")
            request.done.set()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                hard_stop = time.monotonic() + 10 * self._window_s
                while (
                    not self._closed
                    and (due := min(self._last + self._window_s, hard_stop)) > time.monotonic()
                ):
                    self._cond.wait(due - time.monotonic())
                batch, self._queue = self._queue, []
            if batch:
                self._send(batch)


def scancel(job_ids: list[str]) -> None:
    """Cancel jobs (array elements `123_4` or whole jobs); errors are logged, never raised."""
    if not job_ids:
        return
    try:
        done = subprocess.run(["scancel", *job_ids], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.error("scancel %s failed: %s", " ".join(job_ids), exc)
        return
    if done.returncode != 0:
        log.error("scancel %s: %s", " ".join(job_ids), done.stderr.strip())


def _tail(path: Path, lines: int = TRACEBACK_LINES) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, handle.seek(0, os.SEEK_END) - 64 * 1024))
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def _refresh_directory(folder: Path) -> None:
    """Touching a directory's mode drops a network filesystem's cached view of it (as submitit does)."""
    with contextlib.suppress(OSError):
        folder.chmod(folder.stat().st_mode)
