"""The Modal backend: each cell is one call of the deployed app's function (see `modal_app`).

A cell is spawned, then polled until its record comes back. A watchdog times only the wait for the call
to start (no GPU free, an image that never boots); once it runs, only the cell's own timeout applies.
A finished cell's run directory is copied from the runs volume into the local runs directory. Missing
credentials and exhausted funds or quota end the backend: no further cell is submitted, and every cell
gets an error row that says what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import modal
import modal.exception as modal_errors
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llc.backends.base import Backend, BackendUnavailable, Job
from llc.cells.cell import Cell
from llc.cells.record import CellRecord
from llc.config import RunConfig

log = logging.getLogger(__name__)

GPU_TYPES = ("H100", "A100", "A100-80GB", "L40S", "L4", "A10G", "T4")
DEPLOY_COMMAND = "deployments/modal/deploy.sh"
NO_TOKEN = "no Modal credentials: run `modal token new`, or set MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"
OUT_OF_FUNDS = (
    "Modal refused the work for lack of funds or quota (ResourceExhaustedError): add credit or raise the "
    "workspace's spending limit on modal.com (Settings → Usage and Billing), then run the sweep again"
)
# The request and reply of the remote function; bumped when either changes shape.
PROTOCOL = 1


@dataclass(frozen=True)
class Tier:
    """Resources of one call: GPU types in order of preference, CPU cores, memory, time limit."""

    gpus: tuple[str, ...]
    cpu: float
    memory_mb: int
    timeout_s: int


TIERS = {
    "debug": Tier(("T4", "L4"), cpu=2.0, memory_mb=8192, timeout_s=900),
    "standard": Tier(("L4", "A10G", "T4"), cpu=4.0, memory_mb=16384, timeout_s=3600),
    "fast": Tier(("A100", "L40S", "A10G"), cpu=8.0, memory_mb=32768, timeout_s=4 * 3600),
    "h100": Tier(("H100", "A100-80GB"), cpu=8.0, memory_mb=65536, timeout_s=8 * 3600),
}


class ModalOptions(BaseSettings):
    """Settings of the app (deploy time) and client; each reads LLC_MODAL_<NAME> and .env, arguments win."""

    model_config = SettingsConfigDict(env_prefix="LLC_MODAL_", env_file=".env", extra="ignore")

    app_name: str = Field("llc-experiments", description="name of the deployed Modal app")
    environment: str | None = Field(None, description="Modal environment; default: the profile's")
    tier: Literal["debug", "standard", "fast", "h100"] = Field(
        "standard", description="resources of a call (deploy time): GPU types, CPU, memory, time limit"
    )
    gpu_types: Annotated[list[str] | None, NoDecode] = Field(
        None, description=f"GPU types in order of preference (deploy time), from {', '.join(GPU_TYPES)}"
    )
    timeout_s: int | None = Field(
        None, ge=10, le=86400, description="a call's hard time limit (deploy time); default: the tier's"
    )
    retries: int = Field(1, ge=0, le=10, description="Modal's retries of a crashed call (deploy time)")
    runs_volume: str = Field("llc-runs", description="volume holding run directories")
    cache_volume: str = Field("llc-cache", description="volume holding datasets and model files")
    wandb_secret: str | None = Field(None, description="Modal secret with WANDB_API_KEY (deploy time)")
    s3_secret: str | None = Field(None, description="Modal secret with AWS credentials (deploy time)")
    python_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="more local modules in the image (custom experiments)"
    )
    poll_s: float = Field(2.0, gt=0, description="how often a waiting cell asks for its result")
    client_hang_timeout_s: float = Field(
        900.0, gt=0, description="a call not started after this is cancelled (a running call never is)"
    )
    preflight: bool = Field(True, description="ping the app when the backend is opened")
    preflight_timeout_s: float = Field(180.0, gt=0, description="how long the preflight ping may take")

    @field_validator("gpu_types", "python_sources", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """`H100,A100` from the environment or a flag, as well as a list."""
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("gpu_types")
    @classmethod
    def _known_gpus(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        known = {name.upper(): name for name in GPU_TYPES}
        kept = []
        for name in value:
            if name.upper() in known:
                kept.append(known[name.upper()])
            else:
                log.warning("unknown Modal GPU type %r dropped; known: %s", name, ", ".join(GPU_TYPES))
        if not kept:
            raise ValueError(f"no known GPU type in {value}; choose from {', '.join(GPU_TYPES)}")
        return list(dict.fromkeys(kept))

    def gpus(self) -> list[str]:
        return list(self.gpu_types or TIERS[self.tier].gpus)

    def function_timeout_s(self) -> int:
        return self.timeout_s or TIERS[self.tier].timeout_s


def llc_version() -> str:
    """The installed llc's version; in a Modal container (llc as source code) the one baked into the image."""
    try:
        return version("llc")
    except PackageNotFoundError:
        return os.environ.get("LLC_VERSION", "unknown")


def handshake() -> dict[str, Any]:
    """What client and worker must agree on: llc's version, the config schemas and the request protocol."""
    schemas = json.dumps([Cell.model_json_schema(), RunConfig.model_json_schema()], sort_keys=True)
    return {
        "llc": llc_version(),
        "schema": hashlib.sha256(schemas.encode()).hexdigest()[:12],
        "protocol": PROTOCOL,
    }


def mismatch(client: dict[str, Any], worker: dict[str, Any]) -> str | None:
    """Why a worker cannot run this client's cells, or None when they agree."""
    keys = ("llc", "schema", "protocol")
    if all(client.get(key) == worker.get(key) for key in keys):
        return None

    def show(side: dict[str, Any]) -> str:
        return " ".join(f"{key}={side.get(key)}" for key in keys)

    return f"the deployed app runs {show(worker)}, this client {show(client)}: redeploy: `{DEPLOY_COMMAND}`"


class ModalClient(Protocol):
    """What the backend uses of Modal; tests pass an in-process stand-in."""

    def function(self, name: str) -> Any: ...  # a modal.Function

    def volume(self, name: str) -> Any: ...  # a modal.Volume

    def dict(self, name: str) -> Any: ...  # a modal.Dict


class LiveModal:
    """Modal's own objects of the deployed app, looked up by name."""

    def __init__(self, options: ModalOptions) -> None:
        self.options = options

    def function(self, name: str) -> Any:
        env = self.options.environment
        return modal.Function.from_name(self.options.app_name, name, environment_name=env)

    def volume(self, name: str) -> Any:
        return modal.Volume.from_name(name, environment_name=self.options.environment)

    def dict(self, name: str) -> Any:
        return modal.Dict.from_name(name, environment_name=self.options.environment, create_if_missing=True)


def connect(options: ModalOptions) -> ModalClient:
    """The Modal client the backend and `llc runs` use (replaced in tests)."""
    return LiveModal(options)


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
        self,
        max_parallel: int,
        threads_per_cell: int | None = None,  # a call gets its tier's cores
        client: ModalClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(max_parallel, threads_per_cell, **options)
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
        request = {"cell": cell.model_dump(mode="json"), "skip": skip, "handshake": self.handshake,
                   "ticket": job.ticket}  # fmt: skip
        function = self.client.function("run_cell_gpu" if needs_gpu(cell) else "run_cell_cpu")
        try:
            job.call = function.spawn(request)
        except Exception as exc:
            job.end(self.failure(cell, "submit", exc, 0.0))
            return [job]
        job.job_id = str(getattr(job.call, "object_id", "") or "")
        self._track([job])
        return [job]

    def failure(self, cell: Cell, stage: str, exc: BaseException, ran_s: float) -> CellRecord:
        """An error record for a Modal error; credentials or funds stop all further submissions."""
        if refused := refusal(exc):
            self.refuse(*refused)
            return CellRecord.failed(cell, stage, refused[0], f"{refused[1]} ({exc})", ran_s, retryable=False)
        if isinstance(exc, modal_errors.FunctionTimeoutError):
            limit = self.options.function_timeout_s()
            message = f"the Modal function's time limit ({limit} s, LLC_MODAL_TIMEOUT_S) stopped it"
            return CellRecord.failed(cell, stage, "Timeout", message, ran_s, retryable=False)
        transient = (modal_errors.InternalFailure, modal_errors.ConnectionError, modal_errors.RemoteError,
                     modal_errors.ServiceError, modal_errors.InternalError)  # fmt: skip
        error_type = "Modal" + type(exc).__name__.removesuffix("Error")
        return CellRecord.failed(
            cell, stage, error_type, str(exc) or repr(exc), ran_s, retryable=isinstance(exc, transient)
        )

    def refuse(self, error_type: str, guidance: str) -> None:
        with self._lock:
            if self._refused is None:
                log.error("Modal backend stops submitting: %s", guidance)
                self._refused = (error_type, guidance)

    def _preflight(self) -> None:
        """Ping the deployed app before any cell is submitted; BackendUnavailable says what to do."""
        app = self.options.app_name
        try:
            reply = self.client.function("ping").spawn().get(timeout=self.options.preflight_timeout_s)
        except modal_errors.NotFoundError as exc:
            raise BackendUnavailable(
                f"Modal preflight failed: the app {app!r} is not deployed ({exc}); deploy it with "
                f"`{DEPLOY_COMMAND}` (docs/backends.md, Modal)"
            ) from None
        except TimeoutError:
            raise BackendUnavailable(
                f"Modal preflight failed: the app {app!r} did not answer a ping within "
                f"{self.options.preflight_timeout_s:g} s; see its logs with `modal app logs {app}`"
            ) from None
        except Exception as exc:
            why = refusal(exc)
            detail = why[1] if why else f"{type(exc).__name__}: {exc}"
            raise BackendUnavailable(f"Modal preflight failed: {detail}") from None
        if why := mismatch(self.handshake, reply):
            raise BackendUnavailable(f"Modal preflight failed: {why}")
        wanted = self.options.gpu_types
        if wanted and reply.get("gpu_types") != wanted:
            log.warning(
                "the deployed app uses GPUs %s, not %s: redeploy with `%s --gpu-types %s` to change them",
                reply["gpu_types"], wanted, DEPLOY_COMMAND, ",".join(wanted),
            )  # fmt: skip


def needs_gpu(cell: Cell) -> bool:
    """A cell with gpu_mode off or device cpu runs on the CPU function."""
    return cell.config.get("gpu_mode", "off") != "off" and cell.config.get("device", "auto") != "cpu"


class ModalJob(Job):
    """One cell's call; `wait` polls it, runs the start watchdog and the cell's timeout, and fetches
    the run directory from the volume when it ends."""

    cancelled_type = "ModalCancelled"

    def __init__(self, backend: ModalBackend, cell: Cell, runs_dir: Path, timeout_s: float | None) -> None:
        super().__init__(backend, cell, timeout_s)
        self.call: Any = None  # the modal.FunctionCall, once spawned
        self.ticket = uuid.uuid4().hex
        self._modal = backend
        self._runs_dir = runs_dir

    def _poll(self, timeout: float | None) -> CellRecord | None:
        poll_s = self._modal.options.poll_s
        try:
            reply = self.call.get(timeout=poll_s if timeout is None else min(poll_s, timeout))
        except TimeoutError:  # Python's own: no result yet (Modal's timeouts are other classes)
            return self._check()
        except (Exception, modal_errors.InputCancellation) as exc:
            if not self.live:
                return None
            self._stop()
            return self._modal.failure(self.cell, self._stage, exc, self._ran())
        return self._finish(reply)

    def end(self, record: CellRecord) -> None:
        super().end(record)
        self._forget_progress()

    def _check(self) -> CellRecord | None:
        """Notice the start and the stage; an error record when the call must be stopped."""
        try:
            progress = self._modal.progress.get(self.ticket)
        except Exception as exc:  # a failed look-up is no reason to stop a call
            log.debug("progress of %s unknown: %s", self.cell.name, exc)
            progress = None
        now = time.monotonic()
        if progress:
            self._stage = progress.get("stage", self._stage)
            self._running(now)
        hang_s = self._modal.options.client_hang_timeout_s
        if self._running_since is None and now - self._submitted >= hang_s:
            self._stop()
            message = (
                f"call {self.call.object_id} did not start within {hang_s:g} s "
                "(LLC_MODAL_CLIENT_HANG_TIMEOUT_S): no GPU of the deployed types was free, "
                "or its container failed to boot "
                f"(`modal app logs {self._modal.options.app_name}`); it was cancelled"
            )
            return CellRecord.failed(self.cell, "queued", "ModalNotStarted", message, 0.0, retryable=True)
        return None

    def _finish(self, reply: dict[str, Any]) -> CellRecord:
        """The worker's record, with its run directory copied from the volume to the local runs directory."""
        from llc.backends.modal_volume import pull_run

        record = CellRecord.model_validate(reply["record"])
        if not record.run_dir:
            return record
        local = self._runs_dir / self.cell.run_id
        try:
            pull_run(self._modal.runs_volume, self.cell.run_id, self._runs_dir)
        except Exception as exc:
            message = (
                f"the cell ran, but its run directory could not be fetched from the volume "
                f"{self._modal.options.runs_volume!r} ({type(exc).__name__}: {exc}); it stays there: "
                f"`llc pull-runs {self.cell.run_id}`"
            )
            return CellRecord.failed(
                self.cell, "fetch", "ModalFetchFailed", message, record.duration_s, retryable=True
            )
        return record.model_copy(update={"run_dir": str(local)})

    def _stop(self) -> None:
        if self.call is None:
            return
        try:
            self.call.cancel(terminate_containers=True)
        except Exception as exc:
            log.error("cancelling Modal call %s failed: %s", getattr(self.call, "object_id", "?"), exc)
        self._forget_progress()

    def _forget_progress(self) -> None:
        if self.call is None:
            return
        try:
            self._modal.progress.pop(self.ticket, None)
        except Exception as exc:
            log.debug("progress of %s not removed: %s", self.cell.name, exc)


def cancel_jobs(call_ids: list[str]) -> list[str]:
    """Cancel recorded calls from any shell (`llc sweep cancel`); the ids Modal accepted."""
    cancelled = []
    for call_id in call_ids:
        try:
            modal.FunctionCall.from_id(call_id).cancel(terminate_containers=True)
        except Exception as exc:
            log.error("cancelling Modal call %s failed: %s", call_id, exc)
        else:
            cancelled.append(call_id)
    return cancelled
