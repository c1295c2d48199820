"""Run one cell where a backend put it: reuse a sealed result or compute it, and always return a record.

A per-run lock (runs/.locks/<run_id>.lock, outside the run directory, which a fresh computation
empties) makes two sweeps that share a runs directory compute a cell once: the second waits, then
finds the result sealed. A per-family lock trains each family's ERM point once.
"""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from llc.cells.cell import Cell
from llc.cells.experiments import LLC_EXPERIMENT, load_experiment
from llc.cells.record import CellRecord
from llc.cells.tracking import track
from llc.rundir import RunDir
from llc.settings import load_settings

StageCallback = Callable[[str], None]


CHECKPOINT_EVERY_S = 60.0


def run_cell(
    cell: Cell, runs_dir: Path, skip: bool = True, on_stage: StageCallback | None = None
) -> CellRecord:
    """Compute (or reuse, when skip) the cell's run directory; exceptions become error records."""
    start = time.perf_counter()
    stage = ""

    def enter(name: str) -> None:
        nonlocal stage
        if name != stage and on_stage is not None:
            on_stage(name)
        stage = name

    run_dir = RunDir(runs_dir, cell.run_id)
    enter("lock")
    try:
        with file_lock(runs_dir / ".locks" / f"{cell.run_id}.lock"):
            if skip and (record := cached_record(cell, runs_dir)):
                return record
            enter("config")
            metrics = _compute(cell, cell.load_config(), run_dir, enter)
    except Exception as exc:
        return CellRecord.from_exception(cell, exc, stage, time.perf_counter() - start)
    record = _outcome(cell, run_dir, metrics, time.perf_counter() - start, cached=False)
    enter("track")
    if warning := track(cell, run_dir.path, metrics, load_settings()):
        record = record.model_copy(update={"metrics": {**record.metrics, "wandb_warning": warning}})
    return record


def cached_record(cell: Cell, runs_dir: Path) -> CellRecord | None:
    """The record of a sealed, intact result of this cell, or None when it must be computed."""
    start = time.perf_counter()
    run_dir = RunDir(runs_dir, cell.run_id)
    if not run_dir.is_complete():
        return None
    try:
        metrics = run_dir.read_json("metrics.json")
    except (OSError, ValueError):
        return None
    return _outcome(cell, run_dir, metrics, time.perf_counter() - start, cached=True)


def _outcome(
    cell: Cell, run_dir: RunDir, metrics: dict[str, Any], duration: float, cached: bool
) -> CellRecord:
    """ok, unless an LLC run's chains all diverged: a deterministic failure, so never retried."""
    if cell.experiment == LLC_EXPERIMENT and metrics.get("chains_used") == 0:
        message = "every chain diverged, so there is no estimate; lower step_size or raise gamma"
        return CellRecord.failed(
            cell, "sampling", "Diverged", message, duration, retryable=False,
            cached=cached, run_dir=str(run_dir.path), metrics=metrics,
        )  # fmt: skip
    return CellRecord.ok(cell, str(run_dir.path), metrics, duration, cached)


def _compute(cell: Cell, config: BaseModel, run_dir: RunDir, enter: StageCallback) -> dict[str, Any]:
    if cell.experiment == LLC_EXPERIMENT:
        return _compute_llc(config, run_dir.path.parent, enter)
    experiment = load_experiment(cell.experiment)()
    path = run_dir.prepare()
    run_dir.write_json("config.json", {"run_id": cell.run_id, "experiment": cell.experiment, **cell.config})
    enter("run")
    metrics = experiment.run(config, path) or {}
    enter("write")
    run_dir.write_json("metrics.json", metrics)
    run_dir.seal()
    return dict(metrics)


def _compute_llc(config: Any, runs_dir: Path, enter: StageCallback) -> dict[str, Any]:
    from llc.run.experiment import run_llc

    enter("erm")
    ensure_erm(config, runs_dir)
    enter("setup")

    def progress(done: int, total: int) -> None:
        enter("sampling" if done < total else "diagnostics")

    # Sampling saves its progress every minute: a killed or requeued cell resumes instead of restarting.
    return run_llc(
        config, runs_dir, skip=False, progress=progress, checkpoint_every_s=CHECKPOINT_EVERY_S
    ).metrics


def ensure_erm(config: Any, runs_dir: Path) -> None:
    """Train the family's w* once, under the family lock; the cells of the family then load it."""
    from llc.problems import build_problem
    from llc.run.experiment import LLCExperiment

    families = runs_dir / "families"
    path = families / config.family_id / "erm.pt"
    if path.exists():
        return
    with file_lock(path.parent / ".lock"):
        if not path.exists():
            # LLCExperiment's own cache method, so the file format stays the engine's.
            LLCExperiment(families)._erm(config, build_problem(config))


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path`; the kernel releases it if the holder is killed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
