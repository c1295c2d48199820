"""The Modal app: image, resources, volumes, secrets, and the functions that run one cell and answer a ping.

Deploy it with `deployments/modal/deploy.sh` (settings from LLC_MODAL_*, see `ModalOptions`). Importing
it needs no credentials. A cell computes in the container's own scratch directory; its sealed run
directory (and its family's trained point) is then copied onto the runs volume and committed, so the
volume only ever holds whole results, and nothing on it is ever deleted here.
"""

from __future__ import annotations

import base64
import shutil
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path
from typing import Any

import modal

from llc.backends.modal.client import handshake, llc_version, mismatch, progress_board
from llc.cells.cell import Cell
from llc.cells.execute import cached_record, run_cell
from llc.cells.record import CellRecord
from llc.settings import TIERS, ModalOptions

RUNS_MOUNT = Path("/runs")
CACHE_MOUNT = Path("/cache")
IMAGE_EXTRAS = ("wandb", "s3")  # optional parts of llc a cell may use on Modal (W&B logging, S3 results)
_LOCKS = shutil.ignore_patterns(".lock", ".locks")

options = ModalOptions()
tier = TIERS[options.tier]


def project_requirements(extras: tuple[str, ...] = IMAGE_EXTRAS) -> list[str]:
    """llc's own dependencies (as installed here) plus those of `extras`; torch's Linux build brings CUDA.
    Empty inside the container, where llc is source code, not an installed distribution."""
    try:
        declared = requires("llc") or []
    except PackageNotFoundError:
        return []
    wanted = []
    for requirement in declared:
        spec, _, marker = requirement.partition(";")
        extra = marker.split("extra ==")[-1].strip().strip("'\"") if "extra ==" in marker else None
        if extra is None or extra in extras:
            wanted.append(spec.strip())
    return wanted


def build_image(settings: ModalOptions) -> modal.Image:
    """Debian with this Python, a C++ compiler, llc's dependencies, the settings the functions were
    defined with, llc."""
    baked = {
        "LLC_VERSION": llc_version(),
        "LLC_MODAL_APP_NAME": settings.app_name,
        "LLC_MODAL_TIER": settings.tier,
        "LLC_MODAL_GPU_TYPES": ",".join(settings.gpus()),
        "LLC_MODAL_TIMEOUT_S": str(settings.function_timeout_s()),
        "LLC_MODAL_RETRIES": str(settings.retries),
        "LLC_MODAL_RUNS_VOLUME": settings.runs_volume,
        "LLC_MODAL_CACHE_VOLUME": settings.cache_volume,
        "LLC_MODAL_WANDB_SECRET": settings.wandb_secret or "",
        "LLC_MODAL_S3_SECRET": settings.s3_secret or "",
        "LLC_MODAL_PYTHON_SOURCES": ",".join(settings.python_sources),
    }
    return (
        modal.Image.debian_slim(python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
        .apt_install("g++")  # compile=true: torch inductor builds C++ (CPU) and Triton's launchers (GPU)
        .uv_pip_install(*project_requirements())
        .env({
            **{key: value for key, value in baked.items() if value},
            "LLC_RUNS_DIR": str(RUNS_MOUNT),
            "HF_HOME": str(CACHE_MOUNT / "huggingface"),
            "TORCH_HOME": str(CACHE_MOUNT / "torch"),
            "XDG_CACHE_HOME": str(CACHE_MOUNT),
            "PYTHONUNBUFFERED": "1",
        })
        .add_local_python_source("llc", *settings.python_sources)
    )  # fmt: skip


image = build_image(options)
app = modal.App(options.app_name, image=image)
runs_volume = modal.Volume.from_name(options.runs_volume, create_if_missing=True)
cache_volume = modal.Volume.from_name(options.cache_volume, create_if_missing=True)
volumes: dict[str, Any] = {str(RUNS_MOUNT): runs_volume, str(CACHE_MOUNT): cache_volume}
secrets = [modal.Secret.from_name(name) for name in (options.wandb_secret, options.s3_secret) if name]
# Modal retries a call whose container crashed or was preempted; a cell's own errors come back as records.
retries = modal.Retries(max_retries=options.retries, initial_delay=5.0) if options.retries else None
resources: dict[str, Any] = {
    "cpu": tier.cpu, "memory": tier.memory_mb, "timeout": options.function_timeout_s(), "retries": retries,
    "volumes": volumes, "secrets": secrets,
}  # fmt: skip


@app.function(gpu=options.gpus(), **resources)
def run_cell_gpu(request: dict[str, Any]) -> dict[str, Any]:
    """One cell on the first free GPU type of the list."""
    return _serve(request)


@app.function(**resources)
def run_cell_cpu(request: dict[str, Any]) -> dict[str, Any]:
    """One cell that needs no GPU (gpu_mode off, or device cpu)."""
    return _serve(request)


@app.function(cpu=0.25, memory=512, timeout=60)
def ping() -> dict[str, Any]:
    """The worker's handshake and how it was deployed, for the client's preflight."""
    return {**handshake(), "gpu_types": options.gpus(), "tier": options.tier}


def _serve(request: dict[str, Any]) -> dict[str, Any]:
    # Outside a container (`.local()`) there is no mounted volume to commit and no progress board.
    remote = not modal.is_local()
    board = modal.Dict.from_name(progress_board(options.app_name), create_if_missing=True) if remote else None
    try:
        return serve_cell(request, RUNS_MOUNT, board)
    finally:
        if remote:
            runs_volume.commit()
            cache_volume.commit()


def serve_cell(request: dict[str, Any], runs_root: Path, board: Any | None) -> dict[str, Any]:
    """Check the handshake, report the start, run the cell onto `runs_root`; the reply carries its record."""
    worker = handshake()
    if why := mismatch(request.get("handshake", {}), worker):
        raw = request["cell"]
        record = CellRecord(
            cell=raw["name"], status="error", run_id=raw["run_id"], family_id=raw.get("family_id"),
            stage="handshake", error_type="ModalVersionMismatch", error=why, retryable=False,
        )  # fmt: skip
        return {"worker": worker, "record": record.model_dump(mode="json")}
    ticket = request["ticket"]

    def report(stage: str) -> None:
        if board is not None:
            board.put(ticket, {"stage": stage})

    report("start")
    with tempfile.TemporaryDirectory(prefix="llc-files-") as folder:
        cell = with_attachments(Cell.model_validate(request["cell"]), request.get("files", {}), Path(folder))
        record = run_on_volume(cell, runs_root, request["skip"], report)
    return {"worker": worker, "record": record.model_dump(mode="json")}


def with_attachments(cell: Cell, files: dict[str, str], folder: Path) -> Cell:
    """The cell reading the files the request carries from `folder`. The weights' path is not part of
    the run_id (their content is), so the cell keeps its run_id."""
    if "weights" not in files:
        return cell
    path = folder / "weights.pt"
    path.write_bytes(base64.b64decode(files["weights"]))
    return cell.model_copy(update={"config": {**cell.config, "weights": str(path)}})


def run_on_volume(cell: Cell, runs_root: Path, skip: bool, on_stage: Callable[[str], None]) -> CellRecord:
    """A sealed result already on the volume (when skip), else computed in scratch and copied onto it.
    The record's run_dir is the run id (a path on the volume), empty when there is no run directory."""
    record = cached_record(cell, runs_root) if skip else None
    if record is None:
        with tempfile.TemporaryDirectory(prefix="llc-cell-") as folder:
            scratch = Path(folder)
            family = Path("families") / cell.family_id if cell.family_id else None
            known_family = bool(family and (runs_root / family).is_dir())
            if family and known_family:
                shutil.copytree(runs_root / family, scratch / family, ignore=_LOCKS)
            record = run_cell(cell, scratch, skip=False, on_stage=on_stage)
            if record.run_dir:
                on_stage("upload")
                shutil.copytree(scratch / cell.run_id, runs_root / cell.run_id, dirs_exist_ok=True)
            if family and not known_family and (scratch / family).is_dir():
                shutil.copytree(scratch / family, runs_root / family, dirs_exist_ok=True, ignore=_LOCKS)
    return record.model_copy(update={"run_dir": cell.run_id if record.run_dir else ""})
