"""The `sweep` flow: study → cells → one Prefect task per cell on a backend → results table → artifacts.

The flow is Completed when every cell ran, failures included (they are listed in errors.csv and the
artifacts); it is Failed only when the sweep itself cannot run, e.g. an invalid study, which is
detected before any cell is submitted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.tasks import Task, exponential_backoff

from llc.backends import Backend, BackendUnavailable, get_backend, run_on
from llc.cells import tracking
from llc.cells.cell import Cell
from llc.cells.execute import cached_record
from llc.cells.record import CellFailed, CellRecord, is_retryable
from llc.errors import ConfigError
from llc.rundir import RunDir, atomic_write
from llc.settings import Settings, load_settings
from llc.storage import pending, s3
from llc.storage.sync import store_run, store_sweep, sync
from llc.sweeps import artifacts, interrupt, live
from llc.sweeps.figures import llc_figures
from llc.sweeps.options import Sweep, prepare, sweep_options
from llc.sweeps.plan import Plan
from llc.sweeps.results import JOBS_FILE, error_rows, result_rows, sweep_dir, write_results
from llc.sweeps.summary import summarize, to_markdown

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

EXTRA_TASK_THREADS = 4
# Where Prefect keeps each cell task's result, under prefect-results/ in the bucket (beside runs/, sweeps/).
TASK_RESULT_KEY = "{flow_run.id}/{parameters[cell].name}.json"


def retry_if_retryable(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry a crash, an OSError or an out-of-memory; never a bad config, a diverged run or a timeout."""
    exc = state.data
    if interrupt.requested():
        return False
    if isinstance(exc, CellFailed):
        return exc.record.retryable
    return isinstance(exc, BaseException) and is_retryable(exc)


@task(cache_policy=NO_CACHE, persist_result=False, retry_condition_fn=retry_if_retryable)
def run_cell_task(cell: Cell, runs_dir: Path, skip: bool, backend: Backend, timeout_s: float) -> CellRecord:
    """One cell: its sealed result when there is one, else computed on the backend; errors fail the task.

    Once the sweep is told to stop, a cell that has not started, or whose work was stopped, is cancelled.
    """
    record = CellRecord.cancelled(cell, "queued", interrupt.reason()) if interrupt.requested() else None
    if record is None and skip:
        record = cached_record(cell, runs_dir)
    if record is None:
        try:
            record = run_on(backend, cell, runs_dir, skip, timeout_s)
        except Exception:
            if not interrupt.requested():
                raise
            record = CellRecord.cancelled(cell, "submit", interrupt.reason())
        if record.status == "error" and interrupt.requested():
            record = CellRecord.cancelled(cell, record.stage, interrupt.reason())
    context = TaskRunContext.get()
    run_dir = str(RunDir(runs_dir, cell.run_id).path)
    record = record.model_copy(
        update={"attempts": context.task_run.run_count if context else 1, "run_dir": run_dir}
    )
    if record.status == "error":
        raise CellFailed(record)
    return record


# The sweep that `run_prepared` hands to the flow, prepared (planned and resolved) by the launcher already.
_PREPARED: ContextVar[Sweep | None] = ContextVar("prepared_sweep", default=None)


def run_prepared(prepared: Sweep) -> State[Any]:
    """Run the flow on a sweep the launcher prepared: it is not planned or resolved again; its options
    become the flow run's parameters, as Prefect shows them. Returns the final state."""
    options = prepared.options
    study, runs_dir = options.study, options.runs_dir
    token = _PREPARED.set(prepared)
    try:
        return sweep(
            study=str(study) if isinstance(study, Path) else study, backend=options.backend,
            runs_dir=str(runs_dir) if runs_dir else None, skip=options.skip,
            max_parallel=options.max_parallel, timeout_s=options.timeout_s, retries=options.retries,
            backend_options=options.backend_options or None, return_state=True,
        )  # fmt: skip
    finally:
        _PREPARED.reset(token)


def _run_name() -> str:
    """`<study name>-<short id>`: the study's `name` (else its file's stem), so that the Prefect UI tells
    apart sweeps whose files are all called study.yaml."""
    study = flow_run.parameters.get("study") or load_settings().study
    return f"{study_name(study)}-{str(flow_run.id or '')[:6] or 'local'}"


def study_name(study: str | Path | dict[str, Any] | None) -> str:
    """A study's `name` as its file or mapping gives it, else its file's stem (`inline` for a mapping)."""
    if isinstance(study, dict):
        return str(study.get("name") or "inline")
    if study is None:
        return "sweep"
    try:
        data = yaml.safe_load(Path(study).read_text())
    except (OSError, yaml.YAMLError):
        data = None
    name = data.get("name") if isinstance(data, dict) else None
    return str(name or Path(study).stem)


@flow(name="sweep", flow_run_name=_run_name, persist_result=False)
def sweep(
    study: str | dict[str, Any] | None = None,
    backend: str | None = None,
    runs_dir: str | None = None,
    skip: bool = True,
    max_parallel: int | None = None,
    timeout_s: float | None = None,
    retries: int | None = None,
    backend_options: dict[str, Any] | None = None,
) -> dict[str, Any] | State[Any]:
    """Run every cell of a study (a YAML path or an inline mapping); returns counts and the results path.

    The parameters are SweepOptions' fields. A study or option that cannot run fails the flow with one
    message and no traceback; SIGINT or SIGTERM (Ctrl-C, a cancelled flow run) stops it: the flow ends
    Cancelled with every finished result.
    """
    started = time.perf_counter()
    logger = get_run_logger()
    prepared = _PREPARED.get()
    if prepared is None:  # a deployment's run or a Python call: the options enter here
        try:
            prepared = prepare(
                sweep_options(
                    study=study, backend=backend, runs_dir=runs_dir, skip=skip, max_parallel=max_parallel,
                    timeout_s=timeout_s, retries=retries, backend_options=backend_options or {},
                )
            )  # fmt: skip
        except ConfigError as exc:
            return Failed(message=str(exc))
    plan, settings, skip = prepared.plan, prepared.settings, prepared.options.skip
    tracking.export_api_key(settings, settings.wandb_mode)
    bucket = s3.open_bucket(settings)
    if bucket is not None:
        earlier = sync(bucket, settings.runs_dir, missing=False)
        if earlier.runs or earlier.sweeps:
            logger.info("uploaded %d runs and %d sweeps left pending by earlier runs",
                        len(earlier.runs), len(earlier.sweeps))  # fmt: skip
    try:
        opened = get_backend(settings.backend, settings.max_parallel, prepared.backend_options)
    except (ValueError, BackendUnavailable) as exc:
        return Failed(message=str(exc))
    with interrupt.on_signals(), opened as cell_backend, interrupt.cancels(cell_backend.cancel_all):
        out = sweep_dir(settings.runs_dir, plan.sweep_id)
        atomic_write(out / "study.json", plan.study.model_dump_json(indent=2).encode())
        logger.info(
            "sweep %s: %d cells on the %s backend, %d at once; results in %s",
            plan.sweep_id, len(plan.cells), settings.backend, settings.max_parallel, out,
        )  # fmt: skip
        # Every cell that must compute goes to the backend at once (one SLURM job array per shape);
        # each task then claims its cell's job, and a retry submits its cell again on its own.
        with live.running(out, [cell.name for cell in plan.cells]) as ended:  # `llc sweep status|cancel`
            todo = [cell for cell in plan.cells if not (skip and cached_record(cell, settings.runs_dir))]
            cell_backend.submit_all(todo, settings.runs_dir, skip, settings.timeout_s, out / JOBS_FILE)
            records, stored = _run_cells(plan, settings, skip, cell_backend, out, bucket, logger, ended)
    return _finish(plan, settings, records, out, logger, started, bucket, stored)


def _run_cells(
    plan: Plan,
    settings: Settings,
    skip: bool,
    backend: Backend,
    out: Path,
    bucket: S3Bucket | None,
    logger: Any,
    ended: Callable[[str, str], None],
) -> tuple[dict[str, CellRecord], dict[str, str | None]]:
    """Map one task per cell; collect records as cells finish (telling `ended`), storing each run in the
    bucket if any.

    Returns the records by cell and, with a bucket, each stored run's s3:// folder (None: pending).
    """
    cell_task = run_cell_task.with_options(
        task_run_name="{cell.name}",
        retries=settings.retries,
        retry_delay_seconds=exponential_backoff(settings.retry_delay_s) if settings.retry_delay_s else 0,
        retry_jitter_factor=settings.retry_jitter or None,
    )
    if bucket is not None:
        # The cached-results machinery stays off (refresh_cache): the result is written, never looked up.
        cell_task = cell_task.with_options(
            persist_result=True, result_storage=s3.task_result_storage(bucket), result_serializer="json",
            result_storage_key=TASK_RESULT_KEY, cache_policy=None, refresh_cache=True,
        )  # fmt: skip
    stored: dict[str, str | None] = {}
    progress = artifacts.ProgressArtifact(plan.sweep_id, len(plan.cells), settings.progress_every_s)
    records: dict[str, CellRecord] = {}
    # The backend lets at most max_parallel cells compute; a few more task threads keep Prefect's
    # per-task bookkeeping, cache checks and artifacts overlapping with the computing cells.
    with ThreadPoolTaskRunner(max_workers=settings.max_parallel + EXTRA_TASK_THREADS) as runner:
        futures = runner.map(
            cell_task,
            {
                "cell": plan.cells,
                "runs_dir": unmapped(settings.runs_dir),
                "skip": unmapped(skip),
                "backend": unmapped(backend),
                "timeout_s": unmapped(settings.timeout_s),
            },
        )
        cells = {future.task_run_id: cell for future, cell in zip(futures, plan.cells, strict=True)}
        for future in as_completed(futures):
            record = _record(future, cells[future.task_run_id], settings.runs_dir)
            records[record.cell] = record
            ended(record.cell, record.status)
            if bucket is not None and record.status == "ok":
                runs_dir = settings.runs_dir
                stored[record.run_id] = store_run(bucket, runs_dir, record.run_id, record.cached, logger)
            if progress.due(len(records)):
                _write(plan, records, out)  # a partial table survives an interrupted sweep
                progress.update(len(records))
    return records, stored


def _record(future: PrefectFuture[CellRecord], cell: Cell, runs_dir: Path) -> CellRecord:
    """The cell's record; a failure outside the cell (the orchestration itself) becomes one too."""
    try:
        value: Any = future.result(raise_on_failure=False)
    except Exception as exc:
        value = exc
    if isinstance(value, CellRecord):
        return value
    if isinstance(value, CellFailed):
        return value.record
    if interrupt.requested():
        record = CellRecord.cancelled(cell, "orchestration", interrupt.reason())
        return record.model_copy(update={"run_dir": str(RunDir(runs_dir, cell.run_id).path)})
    exc = value if isinstance(value, BaseException) else RuntimeError(f"task returned {value!r}")
    record = CellRecord.from_exception(cell, exc, "orchestration", 0.0)
    return record.model_copy(update={"run_dir": str(RunDir(runs_dir, cell.run_id).path)})


def _write(plan: Plan, records: dict[str, CellRecord], out: Path) -> tuple[Path, list[dict[str, Any]]]:
    rows = result_rows(plan.sweep_id, plan.cells, records)
    path = write_results(out, rows, error_rows(plan.sweep_id, records), list(plan.study.grid))
    return path, rows


def _figures(rows: list[dict[str, Any]], out: Path, logger: Any) -> dict[str, Path]:
    """The sweep's LLC figures in plots/, by title; none for a sweep without estimates (nor matplotlib).

    A figure that cannot be drawn is a warning: every cell has its record and the sweep still completes.
    """
    if not any(isinstance(row.get("llc_mean"), int | float) for row in rows):
        return {}
    try:
        return llc_figures(rows, out / "plots")
    except Exception as exc:
        logger.warning("the sweep's figures could not be drawn: %s: %s", type(exc).__name__, exc)
        return {}


def _finish(
    plan: Plan,
    settings: Settings,
    records: dict[str, CellRecord],
    out: Path,
    logger: Any,
    started: float,
    bucket: S3Bucket | None,
    stored: dict[str, str | None],
) -> dict[str, Any] | State[Any]:
    path, rows = _write(plan, records, out)
    summary = summarize(rows, settings.best_by)
    figures = _figures(rows, out, logger)
    relative = {title: str(file.relative_to(out)) for title, file in figures.items()}
    atomic_write(out / "summary.md", to_markdown(plan.sweep_id, summary, str(path), relative).encode())
    inline = {title: artifacts.inline_image(file) for title, file in figures.items()}
    markdown = to_markdown(plan.sweep_id, summary, str(path), inline)
    stored_results, waiting = None, 0
    if bucket is not None:
        stored_results = store_sweep(bucket, settings.runs_dir, plan.sweep_id, logger)
        waiting = len(pending.pending(settings.runs_dir))
        markdown += artifacts.storage_markdown(stored_results, waiting)
    artifacts.publish(plan.sweep_id, rows, markdown, stored if bucket is not None else None, stored_results)
    wall_s = time.perf_counter() - started
    logger.info(
        "sweep %s finished in %.1f s: %d cells, %d ok, %d failed, %d cached, %d cancelled; results: %s",
        plan.sweep_id, wall_s, summary.total, summary.ok, summary.failed, summary.cached,
        summary.cancelled, path,
    )  # fmt: skip
    if waiting:
        logger.warning("%d uploads to S3 are pending; `llc sync` or the next sweep uploads them", waiting)
    result = {
        "sweep_id": plan.sweep_id, "results": str(path), "errors": str(out / "errors.csv"),
        "total": summary.total, "ok": summary.ok, "failed": summary.failed, "cached": summary.cached,
        "cancelled": summary.cancelled, "wall_s": round(wall_s, 3), "stored": stored_results,
        "pending_uploads": waiting,
    }  # fmt: skip
    if interrupt.requested():
        finished = summary.total - summary.cancelled
        message = f"{interrupt.reason()}: {finished} cells finished, {summary.cancelled} cancelled"
        return Cancelled(message=message, data=result)
    return result
