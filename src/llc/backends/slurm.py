"""The SLURM backend: each cell is one SLURM job, submitted through submitit as part of a job array.

A sweep hands over every cell it must compute at once (`submit_all`): one sbatch per resource shape,
a job array throttled to `max_parallel` running elements (`%N`), after `sbatch --test-only` has
accepted that shape. Each cell's Prefect task then waits on its own array element; a retried cell
goes out alone. Every job ends in a record within seconds of
the event, whatever happens to it: its result, or an error record with the SLURM state, the paths
of its logs and the tail of its stderr when SLURM cancels it, times it out, kills it for memory or
loses its node. A cell is Checkpointable: at its time limit or on preemption the job is requeued (up
to `max_requeues` times) and the experiment resumes from its own checkpoint.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llc.backends.base import Backend, BackendUnavailable, Job, JobState
from llc.backends.slurm_states import PENDING, RUNNING, StateTracker, base_state, command, is_final, query
from llc.cells.cell import Cell
from llc.cells.execute import run_cell
from llc.cells.record import TRACEBACK_LINES, CellRecord


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
    from submitit.slurm.slurm import _make_sbatch_string

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a waiting cell looks for its result file between state polls
RESULT_GRACE_S = 15.0  # a COMPLETED job's result may take this long to show on a shared filesystem
FAILED_GRACE_S = 2.0  # the same for a job that ended otherwise (its result, if any, was written first)
# What sbatch says when it refuses a job shape, and the option that changes it.
REFUSALS = (
    ("gres", ("gpus",)),
    ("partition", ("partition",)),
    ("account", ("account",)),
    ("qos", ("qos",)),
    ("time limit", ("timeout_min",)),
    ("memory", ("mem_gb",)),
    ("node configuration", ("cpus", "mem_gb", "gpus")),
)
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
    gpus: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="GPUs per cell; auto: one for a cell whose gpu_mode is vectorized or sequential"
        " where the partition has GPUs (sinfo), else none",
    )
    signal_delay_s: int = Field(
        90, ge=1, description="seconds before the time limit to checkpoint and requeue (at most half of it)"
    )
    max_requeues: int = Field(3, ge=0, description="time limits a cell may hit and be requeued")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each cell")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="further sbatch options, e.g. constraint=a100 (true: a bare flag, e.g. no-requeue)",
    )
    python: str | None = Field(None, description="python command on the nodes; default: this interpreter")
    folder: Path | None = Field(None, description="submitit's logs and pickles; default: RUNS_DIR/.slurm/...")
    job_name: str = Field("llc", pattern=r"^[\w.-]+$", description="job name prefix; a session id follows")
    poll_s: float = Field(2.0, gt=0, description="how often sacct (or squeue) is asked about running cells")
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


class SlurmBackend(Backend):
    """Submits cells as job arrays, at most `max_parallel` elements of each running at once, and tracks
    them; use it as a context manager (see `close`)."""

    name, label = "slurm", "SLURM"
    options_model = SlurmOptions

    def __init__(self, max_parallel: int, threads_per_cell: int | None = None, **options: Any) -> None:
        super().__init__(max_parallel, threads_per_cell, **options)
        self.options: SlurmOptions
        self.session = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        self.job_name = f"{self.options.job_name}-{self.session[-6:]}"
        self.states = StateTracker(self.options.poll_s)

    def release(self, job: Job) -> None:
        super().release(job)
        self.states.forget(job.job_id)

    def _start_all(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        """One job array per resource shape, each shape checked with `sbatch --test-only` first."""
        groups: dict[str, list[Cell]] = {}
        for cell in cells:
            groups.setdefault(json.dumps(self._parameters(cell, timeout_s), sort_keys=True), []).append(cell)
        for group in groups.values():
            self._check_shape(self._folder(runs_dir), self._parameters(group[0], timeout_s), len(group))
        jobs: list[Job] = []
        for group in groups.values():
            try:
                jobs += self._start(group, runs_dir, skip, timeout_s)
            except SlurmSubmitError as exc:  # their tasks submit them one by one, with retries
                log.warning("%s; the cells go out one by one", exc)
        return jobs

    def _stop_all(self, jobs: list[Job]) -> None:
        scancel([job.job_id for job in jobs])  # one scancel for all

    def _close(self) -> None:
        self.states.close()

    def _folder(self, runs_dir: Path) -> Path:
        return (self.options.folder or Path(runs_dir) / ".slurm") / self.session

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
            "array_parallelism": self.max_parallel,
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
        if self.options.gpus != "auto":
            return self.options.gpus
        wants_gpu = cell.config.get("gpu_mode") in ("vectorized", "sequential")
        return int(wants_gpu and cell.config.get("device", "auto") != "cpu" and self._partition_has_gpus)

    @functools.cached_property
    def _partition_has_gpus(self) -> bool:
        """Whether the partition (default: the cluster's default one) has nodes with GPUs (sinfo GRES)."""
        table = command(["sinfo", "--noheader", "--format=%P|%G"], 30.0)
        if table is None:
            log.warning("sinfo failed: cells ask for no GPU (set the SLURM option gpus to ask for some)")
            return False
        rows = [line.split("|", 1) for line in table.splitlines() if "|" in line]
        wanted = self.options.partition
        return any(
            "gpu" in gres.lower()
            for partition, gres in rows
            if partition.rstrip("*") == wanted or (wanted is None and partition.endswith("*"))
        )

    def _check_shape(self, folder: Path, parameters: dict[str, Any], count: int) -> None:
        """`sbatch --test-only` on the job shape; a refusal is BackendUnavailable naming the option."""
        script = _make_sbatch_string(command="true", folder=folder, map_count=count, **parameters)
        with tempfile.NamedTemporaryFile("w", suffix=".sh", prefix="llc-shape-") as handle:
            handle.write(script)
            handle.flush()
            try:
                done = subprocess.run(
                    ["sbatch", "--test-only", handle.name], capture_output=True, text=True, timeout=60
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise BackendUnavailable(f"sbatch --test-only could not run: {exc}") from None
        if done.returncode == 0:
            return
        error = " ".join(line.strip() for line in done.stderr.splitlines() if line.strip())
        options = next((opts for mark, opts in REFUSALS if mark in error.lower()), ("sbatch",))
        shape = ", ".join(
            f"{key}={parameters[key]}"
            for key in ("partition", "account", "qos", "cpus_per_task", "mem", "gpus_per_node", "time")
            if key in parameters
        )
        named = " or ".join(f"`{option}`" for option in options)
        raise BackendUnavailable(
            f"the cluster refuses this sweep's jobs ({shape}): {error}; change the SLURM option {named} "
            f"(--backend-option {options[0]}=..., LLC_SLURM_{options[0].upper()}, or the study's "
            "execution.backend_options); nothing was submitted"
        )

    def _start(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        """One sbatch for cells of one shape (a job array if several); SlurmSubmitError when refused."""
        parameters = self._parameters(cells[0], timeout_s)
        import_path = [os.path.abspath(p) for p in sys.path if p]
        try:
            executor = submitit.SlurmExecutor(
                self._folder(runs_dir), max_num_timeout=self.options.max_requeues, python=self.options.python
            )
            executor.update_parameters(**parameters)
            calls = [CellCall(cell, Path(runs_dir), skip, import_path) for cell in cells]
            submitted = executor.submit_array(calls)
        except Exception as exc:
            hint = ""
            if "gres" in str(exc).lower() and parameters.get("gpus_per_node"):
                hint = (
                    "; the cells ask for a GPU (gpu_mode vectorized or sequential): on a partition"
                    " without GPUs pass --backend-option gpus=0 (or --set device=cpu)"
                )
            raise SlurmSubmitError(f"sbatch failed for {len(cells)} cell(s): {exc}{hint}") from None
        jobs: list[Job] = [
            SlurmJob(self, job, cell, timeout_s) for job, cell in zip(submitted, cells, strict=True)
        ]
        self.states.watch([job.job_id for job in jobs])
        self._track(jobs, str(self._folder(runs_dir)))
        return jobs

    def _adopt(
        self, recorded: dict[str, dict[str, str]], cells: list[Cell], timeout_s: float | None
    ) -> list[Job]:
        """Jobs of an earlier run of the sweep that SLURM still queues or runs, or that ended with an ok
        result after the sweep looked for sealed results."""
        entries = {cell.name: recorded[cell.name] for cell in cells if cell.name in recorded}
        states = query([entry["job_id"] for entry in entries.values()])[0] if entries else {}
        jobs: list[Job] = []
        for cell in cells:
            if (entry := entries.get(cell.name)) is None:
                continue
            state = states.get(entry["job_id"], "")
            job = SlurmJob(self, submitit.SlurmJob(Path(entry["folder"]), entry["job_id"]), cell, timeout_s)
            if base_state(state) not in PENDING | RUNNING and not job.left_ok():
                continue
            jobs.append(job)
            log.info("cell %s: adopted SLURM job %s (%s) of an earlier run", cell.name, job.job_id, state)
        self.states.watch([job.job_id for job in jobs])
        with self._lock:
            self._active.update(jobs)
        return jobs


class SlurmJob(Job):
    """One cell's SLURM job (an array element); `wait` returns its record, never waiting forever."""

    def __init__(
        self, backend: SlurmBackend, job: submitit.Job[Any], cell: Cell, timeout_s: float | None
    ) -> None:
        super().__init__(backend, cell, timeout_s, job.job_id)
        self.paths = job.paths
        self._slurm = backend
        self._last_known = time.monotonic()

    @property
    def stage(self) -> str:
        """The stage the job last reported; `queued` before it started."""
        try:
            return (self.paths.folder / f"{self.job_id}.stage").read_text().strip() or "start"
        except OSError:
            return "queued" if self._running_since is None and not self._ran_s else "start"

    def left_ok(self) -> bool:
        """Whether the job has ended with an ok record."""
        if not self.paths.result_pickle.exists():
            return False
        outcome, value = submitit_utils.pickle_load(self.paths.result_pickle)
        return outcome == "success" and isinstance(value, CellRecord) and value.status == "ok"

    def _poll(self, timeout: float | None) -> CellRecord | None:
        record = self._check()
        if record is None:
            self._slurm.states.wait_for_update(CHECK_S if timeout is None else min(CHECK_S, timeout))
        return record

    def _stop(self) -> None:
        scancel([self.job_id])

    def _interrupted(self, why: str) -> CellRecord:
        return self._stopped_record("SlurmCancelled", f"was cancelled: {why}", retryable=False)

    def _check(self) -> CellRecord | None:
        """The record if the job has ended (or must be stopped), else None; updates state and clocks."""
        if self.paths.result_pickle.exists():
            return self._result()
        now = time.monotonic()
        known = self._slurm.states.state(self.job_id)
        if known is not None:
            self._last_known = now
            state, since = known
            if base_state(state) in RUNNING:
                self._running(since)
            elif base_state(state) in PENDING:
                self._queued(since)
            if is_final(state, since):
                return self._ended(state)
        elif now - self._last_known > self._slurm.options.lost_after_s:
            return self._stopped(
                "SlurmJobLost",
                f"neither sacct nor squeue has known it for {now - self._last_known:.0f} s",
                True,
            )
        queue_timeout = self._slurm.options.queue_timeout_s
        if (
            queue_timeout
            and self._state is JobState.PENDING
            and now - self._submitted - self._ran() >= queue_timeout
        ):
            return self._stopped("SlurmQueueTimeout", f"still queued after {queue_timeout:g} s", False)
        return None

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
        self._stop()
        return self._stopped_record(error_type, f"{why}; it was cancelled", retryable)

    def _stopped_record(self, error_type: str, why: str, retryable: bool) -> CellRecord:
        message = f"SLURM job {self.job_id} {why}; stdout: {self.paths.stdout}; stderr: {self.paths.stderr}"
        tail = _tail(self.paths.stderr)
        return CellRecord.failed(
            self.cell, self.stage, error_type, message, self._ran(), retryable, traceback=tail
        )


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


def cancel_jobs(job_ids: list[str]) -> list[str]:
    """scancel the jobs SLURM still queues or runs (from any shell); their ids."""
    states = query(job_ids)[0]
    live = [job_id for job_id in job_ids if base_state(states.get(job_id, "")) in PENDING | RUNNING]
    scancel(live)
    return live


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
