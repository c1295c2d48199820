"""Run directories on the Modal runs volume: list them, copy them here, and remove them only when asked.

A copy is checked against its manifest before it replaces anything in the local runs directory, so a
run directory arrives whole and sealed or not at all. Nothing here writes to the volume except
`remove_runs`, which `llc runs rm` calls.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from modal.exception import NotFoundError
from modal.types import FileEntryType

from llc.rundir import MANIFEST, RunDir

# Top-level folders of the volume that are not run directories.
NOT_RUNS = frozenset({"families", "sweeps"})


@dataclass(frozen=True)
class VolumeRun:
    """One run directory on the volume."""

    run_id: str
    files: tuple[str, ...]  # paths on the volume
    size: int  # bytes
    mtime: int  # seconds since the epoch, of its newest file
    complete: bool  # has a manifest (sealed by the worker)


class RunNotOnVolume(LookupError):
    """A run id the volume does not hold (or holds only partly)."""


def list_runs(volume: Any) -> list[VolumeRun]:
    """Every run directory on the volume, oldest first."""
    files: dict[str, list[Any]] = {}
    for entry in volume.listdir("/", recursive=True):
        parts = PurePosixPath(entry.path.lstrip("/")).parts
        if entry.type != FileEntryType.FILE or len(parts) < 2:
            continue
        if parts[0].startswith(".") or parts[0] in NOT_RUNS:
            continue
        files.setdefault(parts[0], []).append(entry)
    runs = [
        VolumeRun(
            run_id=run_id,
            files=tuple(sorted(e.path.lstrip("/") for e in entries)),
            size=sum(e.size for e in entries),
            mtime=max(e.mtime for e in entries),
            complete=any(PurePosixPath(e.path.lstrip("/")).parts[1:] == (MANIFEST,) for e in entries),
        )
        for run_id, entries in files.items()
    ]
    return sorted(runs, key=lambda run: (run.mtime, run.run_id))


def select_runs(volume: Any, run_ids: Iterable[str], latest: bool) -> list[VolumeRun]:
    """The named runs (all must be there), or the most recent sealed one."""
    runs = {run.run_id: run for run in list_runs(volume)}
    if latest:
        sealed = [run for run in runs.values() if run.complete]
        if not sealed:
            raise RunNotOnVolume("no sealed run directory on the volume")
        return [max(sealed, key=lambda run: run.mtime)]
    wanted = list(dict.fromkeys(run_ids))
    if missing := [run_id for run_id in wanted if run_id not in runs]:
        raise RunNotOnVolume(f"not on the volume: {', '.join(missing)}")
    return [runs[run_id] for run_id in wanted]


def pull_run(volume: Any, run_id: str, runs_dir: Path) -> Path:
    """Copy runs_dir/<run_id> from the volume; a local copy already sealed with the same manifest is kept."""
    try:
        entries = [e for e in volume.listdir(run_id, recursive=True) if e.type == FileEntryType.FILE]
    except NotFoundError:
        entries = []
    if not entries:
        raise RunNotOnVolume(f"run {run_id} is not on the volume")
    runs_dir.mkdir(parents=True, exist_ok=True)
    local = RunDir(runs_dir, run_id)
    remote_manifest = _read(volume, f"{run_id}/{MANIFEST}")
    if local.is_complete() and (local.path / MANIFEST).read_bytes() == remote_manifest:
        return local.path
    scratch = Path(tempfile.mkdtemp(dir=runs_dir, prefix=f".pull-{run_id}-"))
    try:
        for entry in entries:
            relative = PurePosixPath(entry.path.lstrip("/")).relative_to(run_id)
            dest = scratch / run_id / relative
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as handle:
                for chunk in volume.read_file(entry.path):
                    handle.write(chunk)
        if not RunDir(scratch, run_id).is_complete():
            raise RunNotOnVolume(f"run {run_id} on the volume is not sealed (still running, or it failed)")
        if local.path.exists():
            local.path.rename(scratch / "replaced")
        (scratch / run_id).rename(local.path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return local.path


def remove_runs(volume: Any, runs: list[VolumeRun], dry_run: bool) -> list[str]:
    """The volume paths that go (or would go, with dry_run) with these runs."""
    for run in runs if not dry_run else []:
        volume.remove_file(run.run_id, recursive=True)
    return [path for run in runs for path in run.files]


def _read(volume: Any, path: str) -> bytes:
    try:
        return b"".join(volume.read_file(path))
    except (FileNotFoundError, NotFoundError):
        raise RunNotOnVolume(f"{path} is not on the volume: the run is not sealed") from None
