"""The SLURM backend: each cell is one SLURM job, submitted through submitit as part of a job array.

A sweep hands over every cell it must compute at once (`submit_all`): one sbatch per resource shape,
a job array throttled to `max_parallel` running elements (`%N`), after `sbatch --test-only` has
accepted that shape. Each cell's Prefect task then waits on its own array element; a retried cell
goes out alone. Every job ends in a record within seconds of the event, whatever happens to it: its
result, or an error record with the SLURM state, the paths of its logs and the tail of its stderr
when SLURM cancels it, times it out, kills it for memory or loses its node.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from llc.backends.base import Backend, BackendUnavailable, Job, Recorded
from llc.backends.slurm import submitit_adapter as submitit
from llc.backends.slurm.submitit_adapter import (
    PENDING,
    RUNNING,
    SETTLING,
    Checkpointable,
    Watcher,
    base_state,
    output,
    read_result,
    sbatch_script,
)
from llc.cells.cell import Cell
from llc.cells.execute import run_cell
from llc.cells.record import TRACEBACK_LINES, CellRecord
from llc.settings import SlurmOptions

log = logging.getLogger(__name__)

CHECK_S = 0.5  # how often a waiting cell looks for its result file between state polls
RESULT_GRACE_S = 15.0  # a COMPLETED job's result may take this long to show on a shared filesystem
FAILED_GRACE_S = 2.0  # the same for a job that ended otherwise (its result, if any, was written first)
# A preempted or node-failed job (SETTLING) counts as ended once it has stayed so this long.
SETTLE_S = 10.0
# What sbatch says when it refuses a job shape, and the option that changes it.
REFUSALS = (
    ("gres", ("gpus",)), ("partition", ("partition",)), ("account", ("account",)), ("qos", ("qos",)),
    ("time limit", ("timeout_min",)), ("memory", ("mem_gb",)),
    ("node configuration", ("cpus", "mem_gb", "gpus")),
)  # fmt: skip
MEMORY_KILL_MARKS = ("exceeded memory limit", "exceeded job memory limit", "oom-kill", "oom_kill")


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
        self.watcher = Watcher(self.options.poll_s)

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
        table = output(["sinfo", "--noheader", "--format=%P|%G"])
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
        script = sbatch_script(folder, count, parameters)
        try:  # sbatch reads the script from its input
            done = subprocess.run(
                ["sbatch", "--test-only"], input=script, capture_output=True, text=True, timeout=60
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
        calls = [CellCall(cell, Path(runs_dir), skip, import_path) for cell in cells]
        try:
            executor = submitit.SlurmExecutor(
                self._folder(runs_dir), max_num_timeout=self.options.max_requeues, python=self.options.python
            )
            executor.update_parameters(**parameters)
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
        self._track(jobs, str(self._folder(runs_dir)))
        return jobs

    def _adopt(
        self, recorded: Recorded, cells: list[Cell], runs_dir: Path, timeout_s: float | None
    ) -> list[Job]:
        """Jobs of an earlier run of the sweep that SLURM still queues or runs, or that ended with an ok
        result after the sweep looked for sealed results; submitit re-creates a job from its id."""
        ids = [recorded[cell.name]["job_id"] for cell in cells if cell.name in recorded]
        states = self.watcher.states(ids)
        jobs: list[Job] = []
        for cell in cells:
            if (entry := recorded.get(cell.name)) is None:
                continue
            state = states[entry["job_id"]]
            job = SlurmJob(self, submitit.SlurmJob(Path(entry["folder"]), entry["job_id"]), cell, timeout_s)
            live = base_state(state) in PENDING | RUNNING  # adopted unread; a finished one if it left ok
            if live or (job.paths.result_pickle.exists() and job._result().status == "ok"):
                jobs.append(job)
                log.info("cell %s: adopted SLURM job %s (%s) of an earlier run", cell.name, job.job_id, state)
        return jobs


class SlurmJob(Job):
    """One cell's SLURM job (an array element), wrapping submitit's job (its state from the backend's
    watcher, its paths and result); `wait` returns its record, never waiting forever."""

    def __init__(
        self, backend: SlurmBackend, job: submitit.SlurmJob[Any], cell: Cell, timeout_s: float | None
    ) -> None:
        super().__init__(backend, cell, timeout_s)
        job.watcher = backend.watcher
        backend.watcher.register_job(job.job_id)
        self.job_id, self.submitit, self.paths = job.job_id, job, job.paths
        self.start_limit_s = backend.options.queue_timeout_s
        self._slurm = backend
        self._seen = ("UNKNOWN", time.monotonic())  # the last state and when it was first seen

    @property
    def stage(self) -> str:
        """The stage the job last reported; `queued` before it started."""
        try:
            return (self.paths.folder / f"{self.job_id}.stage").read_text().strip() or "start"
        except OSError:
            return "queued" if self._running_since is None and not self._ran_s else "start"

    def _poll(self, timeout: float | None) -> CellRecord | None:
        record = self._check()
        if record is None:
            time.sleep(CHECK_S if timeout is None else min(CHECK_S, timeout))
        return record

    def _stop(self) -> None:
        scancel([self.job_id])

    def _interrupted(self, why: str) -> CellRecord:
        return self._stopped_record("SlurmCancelled", f"was cancelled: {why}", retryable=False)

    def _not_started(self) -> CellRecord:
        why = f"still queued after {self.start_limit_s:g} s; it was cancelled"
        return self._stopped_record("SlurmQueueTimeout", why, retryable=False)

    def _check(self) -> CellRecord | None:
        """The record if the job has ended (or was lost), else None; updates state and clocks."""
        if self.paths.result_pickle.exists():
            return self._result()
        state, now = self.submitit.state, time.monotonic()
        if state != self._seen[0]:
            self._seen = (state, now)
        kind, since = base_state(state), self._seen[1]
        if state == "UNKNOWN":  # since submission, or since sacct and squeue last knew it
            if now - since <= self._slurm.options.lost_after_s:
                return None
            self._stop()
            why = f"neither sacct nor squeue has known it for {now - since:.0f} s; it was cancelled"
            return self._stopped_record("SlurmJobLost", why, True)
        if kind in RUNNING:
            self._running(since)
        elif kind in PENDING:
            self._queued(since)
        settled = kind in SETTLING and now - since >= SETTLE_S
        return self._ended(state) if settled or self._slurm.watcher.is_done(self.job_id, "cache") else None

    def _ended(self, state: str) -> CellRecord:
        """An ended job's result if it wrote one (submitit gives the filesystem a moment), else an error."""
        grace = RESULT_GRACE_S if base_state(state) == "COMPLETED" else FAILED_GRACE_S
        result = submitit.outcome(self.submitit, grace)
        return self._slurm_error(state) if result is None else self._result(result)

    def _result(self, outcome: tuple[str, Any] | None = None) -> CellRecord:
        kind, value = outcome or read_result(self.paths.result_pickle)
        if kind == "success" and isinstance(value, CellRecord):
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
        kind, tail = base_state(state), self._tail()
        if kind != "OUT_OF_MEMORY" and any(mark in tail.lower() for mark in MEMORY_KILL_MARKS):
            kind, detail = "OUT_OF_MEMORY", detail or "killed for exceeding its memory limit; raise mem_gb"
        # Machine trouble is worth another try; a cancellation, time limit or memory limit is not.
        retryable = kind in ("FAILED", "NODE_FAIL", "BOOT_FAIL", "PREEMPTED")
        why = f"ended {state}{f' ({detail})' if detail else ''} at stage {self.stage}"
        return self._stopped_record("Slurm" + kind.title().replace("_", ""), why, retryable, tail)

    def _stopped_record(self, error: str, why: str, retryable: bool, tail: str | None = None) -> CellRecord:
        why = f"SLURM job {self.job_id} {why}; stdout: {self.paths.stdout}; stderr: {self.paths.stderr}"
        tail = self._tail() if tail is None else tail
        return CellRecord.failed(self.cell, self.stage, error, why, self._ran(), retryable, traceback=tail)

    def _tail(self) -> str:
        """The end of the job's stderr: the traceback, or slurmstepd's word on why it was stopped."""
        try:
            text = self.paths.stderr.read_bytes()[-65536:].decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-TRACEBACK_LINES:])


class CellCall(Checkpointable):
    """What a job runs: one cell. At the time limit or on preemption submitit requeues it as it is,
    and the experiment resumes from its own checkpoint."""

    def __init__(self, cell: Cell, runs_dir: Path, skip: bool, import_path: list[str]) -> None:
        self.cell, self.runs_dir, self.skip, self.import_path = cell, runs_dir, skip, import_path

    def __call__(self) -> CellRecord:
        # The submitting process's import path, so experiments found there import here too.
        sys.path.extend(p for p in self.import_path if p not in sys.path and os.path.isdir(p))
        stage_file = Path(os.environ["SUBMITIT_FOLDER"]) / f"{submitit.JobEnvironment().job_id}.stage"
        return run_cell(self.cell, self.runs_dir, self.skip, stage_file.write_text)


def cancel_jobs(job_ids: list[str]) -> list[str]:
    """scancel the jobs SLURM still queues or runs (from any shell); their ids."""
    states = Watcher(1.0).states(job_ids)
    live = [job for job, state in states.items() if base_state(state) in PENDING | RUNNING]
    scancel(live)
    return live


def scancel(job_ids: list[str]) -> None:
    """Cancel jobs (array elements `123_4` or whole jobs); errors are logged, never raised."""
    if job_ids:
        output(["scancel", *job_ids], level=logging.ERROR)
