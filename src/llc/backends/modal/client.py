"""The Modal backend: each cell is one call of the deployed app's function (`modal/app.py`, the remote side).

A cell is spawned, then polled until its record comes back, and its run directory is copied from the
runs volume into the local runs directory. Missing credentials and exhausted funds or quota end the
backend: no further cell is submitted, and every cell gets an error row that says what to do.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import time
import uuid
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.exception as modal_errors

from llc.backends.base import Backend, BackendUnavailable, Job, Recorded
from llc.cells.cell import Cell
from llc.cells.record import CellRecord
from llc.config import RunConfig
from llc.settings import ModalOptions

log = logging.getLogger(__name__)

DEPLOY_COMMAND = "deployments/modal/deploy.sh"
NO_TOKEN = "no Modal credentials: run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
OUT_OF_FUNDS = (
    "Modal refused the work for lack of funds or quota (ResourceExhaustedError): add credit or raise the "
    "workspace's spending limit on modal.com (Settings → Usage and Billing), then run the sweep again"
)
# The request and reply of the remote function; bumped when either changes shape.
PROTOCOL = 2  # 2: the request carries `files`, a module problem's weights
TRANSIENT = (modal_errors.InternalFailure, modal_errors.InternalError, modal_errors.ServiceError)
TRANSIENT += (modal_errors.ConnectionError, modal_errors.RemoteError)


def llc_version() -> str:
    """The installed llc's version; in a Modal container (llc as source code) the one baked into the image."""
    try:
        return version("llc")
    except PackageNotFoundError:
        return os.environ.get("LLC_VERSION", "unknown")


def handshake() -> dict[str, Any]:
    """What client and worker must agree on: llc's version, the config schemas and the request protocol."""
    schemas = json.dumps([Cell.model_json_schema(), RunConfig.model_json_schema()], sort_keys=True)
    digest = hashlib.sha256(schemas.encode()).hexdigest()[:12]
    return {"llc": llc_version(), "schema": digest, "protocol": PROTOCOL}


def mismatch(client: dict[str, Any], worker: dict[str, Any]) -> str | None:
    """Why a worker cannot run this client's cells, or None when they agree."""
    keys = ("llc", "schema", "protocol")
    if all(client.get(key) == worker.get(key) for key in keys):
        return None
    client_s, worker_s = (" ".join(f"{key}={side.get(key)}" for key in keys) for side in (client, worker))
    return f"the deployed app runs {worker_s}, this client {client_s}: redeploy: `{DEPLOY_COMMAND}`"


def attachments(cell: Cell) -> dict[str, str]:
    """Files of the client's disk that the cell reads, base64-encoded for the request: a module
    problem's weights (the container sees neither that path nor the client's filesystem)."""
    weights = cell.config.get("weights") if cell.config.get("problem") == "module" else None
    return {"weights": base64.b64encode(Path(weights).read_bytes()).decode("ascii")} if weights else {}


def connect(options: ModalOptions) -> Any:
    """Modal's own objects of the deployed app, looked up by name (tests pass an in-process stand-in)."""
    env = {"environment_name": options.environment}
    return SimpleNamespace(
        function=lambda name: modal.Function.from_name(options.app_name, name, **env),
        volume=lambda name: modal.Volume.from_name(name, **env),
        dict=lambda name: modal.Dict.from_name(name, create_if_missing=True, **env),
        call=modal.FunctionCall.from_id,
    )


def progress_board(app_name: str) -> str:
    """The modal.Dict where running calls report their stage, keyed by the ticket of their request."""
    return f"{app_name}-progress"


def refusal(exc: BaseException) -> tuple[str, str] | None:
    """(error type, guidance) for errors that no retry can fix: no credentials, no funds or quota."""
    if isinstance(exc, modal_errors.AuthError):
        return "ModalAuthError", NO_TOKEN
    if isinstance(exc, modal_errors.ResourceExhaustedError):
        return "ModalOutOfFunds", OUT_OF_FUNDS
    return None


class ModalBackend(Backend):
    """Spawns one call per cell, at most `max_parallel` at once (Modal has no queue-side throttle like
    SLURM's `%N`, so calls are spawned as their tasks ask); use it as a context manager."""

    name, label = "modal", "Modal"
    options_model = ModalOptions

    def __init__(
        self, max_parallel: int, threads_per_cell: int | None = None, client: Any = None, **options: Any
    ) -> None:
        super().__init__(max_parallel, threads_per_cell, **options)  # a call gets its tier's cores
        self.options: ModalOptions
        self.client = client or connect(self.options)
        self.handshake = handshake()
        self.runs_volume = self.client.volume(self.options.runs_volume)
        self.progress = self.client.dict(progress_board(self.options.app_name))
        self._refused: tuple[str, str] | None = None
        if self.options.preflight:
            self._preflight()

    def _start(self, cells: list[Cell], runs_dir: Path, skip: bool, timeout_s: float | None) -> list[Job]:
        """Spawn the cell's call; a refused backend answers at once with an error record instead."""
        (cell,) = cells
        job = ModalJob(self, cell, runs_dir, timeout_s)
        if self._refused is not None:
            error_type, guidance = self._refused
            job.end(CellRecord.failed(cell, "submit", error_type, f"not submitted: {guidance}", 0.0, False))
            return [job]
        # A cell with gpu_mode off or device cpu runs on the CPU function.
        gpu = cell.config.get("gpu_mode", "off") != "off" and cell.config.get("device", "auto") != "cpu"
        function = self.client.function("run_cell_gpu" if gpu else "run_cell_cpu")
        try:
            request = {"cell": cell.model_dump(mode="json"), "skip": skip, "handshake": self.handshake,
                       "ticket": job.ticket, "files": attachments(cell)}  # fmt: skip
            job.call = function.spawn(request)
        except Exception as exc:
            job.end(self.failure(cell, "submit", exc, 0.0))
            return [job]
        job.job_id = str(getattr(job.call, "object_id", "") or "")
        self._track([job], job.ticket)
        return [job]

    def _adopt(
        self, recorded: Recorded, cells: list[Cell], runs_dir: Path, timeout_s: float | None
    ) -> list[Job]:
        """Calls of an earlier run of the sweep, re-attached by id (`FunctionCall.from_id`), that still
        run or ended with an ok record; the other cells are spawned again."""
        jobs: list[Job] = []
        for cell in [cell for cell in cells if cell.name in recorded]:
            job = ModalJob(self, cell, runs_dir, timeout_s)
            job.job_id, job.ticket = recorded[cell.name]["job_id"], recorded[cell.name]["folder"]
            try:
                job.call = self.client.call(job.job_id)
                worth = job.call.get(timeout=0)["record"]["status"] == "ok"
            except Exception as exc:  # TimeoutError (Python's own): it still runs; else gone or cancelled
                worth = isinstance(exc, TimeoutError)
            if worth:
                jobs.append(job)
                log.info("cell %s: re-attached to Modal call %s of an earlier run", cell.name, job.job_id)
        return jobs

    def failure(self, cell: Cell, stage: str, exc: BaseException, ran_s: float) -> CellRecord:
        """An error record for a Modal error; credentials or funds stop all further submissions."""
        if refused := refusal(exc):
            with self._lock:
                if self._refused is None:
                    log.error("Modal backend stops submitting: %s", refused[1])
                    self._refused = refused
            return CellRecord.failed(cell, stage, refused[0], f"{refused[1]} ({exc})", ran_s, retryable=False)
        if isinstance(exc, modal_errors.FunctionTimeoutError):
            limit = self.options.function_timeout_s()
            message = f"the Modal function's time limit ({limit} s, LLC_MODAL_TIMEOUT_S) stopped it"
            return CellRecord.failed(cell, stage, "Timeout", message, ran_s, retryable=False)
        error_type, retryable = "Modal" + type(exc).__name__.removesuffix("Error"), isinstance(exc, TRANSIENT)
        return CellRecord.failed(cell, stage, error_type, str(exc) or repr(exc), ran_s, retryable)

    def _preflight(self) -> None:
        """Ping the deployed app before any cell is submitted; BackendUnavailable says what to do."""
        app, limit = self.options.app_name, self.options.preflight_timeout_s
        try:
            reply = self.client.function("ping").spawn().get(timeout=limit)
        except modal_errors.NotFoundError as exc:
            why = f"the app {app!r} is not deployed ({exc}); deploy it: `{DEPLOY_COMMAND}` (docs/backends.md)"
        except TimeoutError:
            why = f"the app {app!r} did not answer a ping within {limit:g} s; logs: `modal app logs {app}`"
        except Exception as exc:
            why = refused[1] if (refused := refusal(exc)) else f"{type(exc).__name__}: {exc}"
        else:
            why = mismatch(self.handshake, reply)
        if why:
            raise BackendUnavailable(f"Modal preflight failed: {why}")
        if (wanted := self.options.gpu_types) and reply.get("gpu_types") != wanted:
            log.warning(
                "the deployed app uses GPUs %s, not %s: redeploy with `%s --gpu-types %s` to change them",
                reply["gpu_types"], wanted, DEPLOY_COMMAND, ",".join(wanted),
            )  # fmt: skip


class ModalJob(Job):
    """One cell's call; `wait` polls it and its stage on the progress board, and fetches the run
    directory from the volume when it ends."""

    cancelled_type = "ModalCancelled"

    def __init__(self, backend: ModalBackend, cell: Cell, runs_dir: Path, timeout_s: float | None) -> None:
        super().__init__(backend, cell, timeout_s)
        self.start_limit_s = backend.options.client_hang_timeout_s
        self.call: Any = None  # the modal.FunctionCall, once spawned
        self.ticket = uuid.uuid4().hex
        self._modal = backend
        self._runs_dir = runs_dir

    def _poll(self, timeout: float | None) -> CellRecord | None:
        poll_s = self._modal.options.poll_s
        try:
            reply = self.call.get(timeout=poll_s if timeout is None else min(poll_s, timeout))
        except TimeoutError:  # Python's own: no result yet (Modal's timeouts are other classes)
            self._progress()
            return None
        except (Exception, modal_errors.InputCancellation) as exc:
            if not self.live:
                return None
            self._stop()
            return self._modal.failure(self.cell, self._stage, exc, self._ran())
        return self._finish(reply)

    def end(self, record: CellRecord) -> None:
        super().end(record)
        self._forget_progress()

    def _progress(self) -> None:
        """The stage the call reported; the first report starts the cell's clock."""
        try:
            progress = self._modal.progress.get(self.ticket)
        except Exception as exc:  # a failed look-up is no reason to stop a call
            log.debug("progress of %s unknown: %s", self.cell.name, exc)
            return
        if progress:
            self._stage = progress.get("stage", self._stage)
            self._running(time.monotonic())

    def _not_started(self) -> CellRecord:
        message = (
            f"call {self.call.object_id} did not start within {self.start_limit_s:g} s "
            "(LLC_MODAL_CLIENT_HANG_TIMEOUT_S): no GPU of the deployed types was free, or its container "
            f"failed to boot (`modal app logs {self._modal.options.app_name}`); it was cancelled"
        )
        return CellRecord.failed(self.cell, "queued", "ModalNotStarted", message, 0.0, retryable=True)

    def _finish(self, reply: dict[str, Any]) -> CellRecord:
        """The worker's record, with its run directory copied from the volume to the local runs directory."""
        from llc.backends.modal.volume import pull_run

        record = CellRecord.model_validate(reply["record"])
        if not record.run_dir:
            return record
        try:
            pull_run(self._modal.runs_volume, self.cell.run_id, self._runs_dir)
        except Exception as exc:
            message = (
                f"the cell ran, but its run directory could not be fetched from the volume "
                f"{self._modal.options.runs_volume!r} ({type(exc).__name__}: {exc}); it stays there: "
                f"`llc pull-runs {self.cell.run_id}`"
            )
            return CellRecord.failed(self.cell, "fetch", "ModalFetchFailed", message, record.duration_s, True)
        return record.model_copy(update={"run_dir": str(self._runs_dir / self.cell.run_id)})

    def _stop(self) -> None:
        if self.call is not None:
            cancel_call(self.call)
            self._forget_progress()

    def _forget_progress(self) -> None:
        if self.call is not None:
            with contextlib.suppress(Exception):  # a stale entry on the board is harmless
                self._modal.progress.pop(self.ticket, None)


def cancel_call(call: Any) -> bool:
    """Cancel a call (or the call of an id) and its containers; False, logged, when that failed."""
    try:
        (modal.FunctionCall.from_id(call) if isinstance(call, str) else call).cancel(
            terminate_containers=True
        )
    except Exception as exc:
        log.error("cancelling Modal call %s failed: %s", getattr(call, "object_id", call), exc)
        return False
    return True


def cancel_jobs(call_ids: list[str]) -> list[str]:
    """Cancel recorded calls from any shell (`llc sweep cancel`); the ids Modal accepted."""
    return [call_id for call_id in call_ids if cancel_call(call_id)]
