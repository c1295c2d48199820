"""Put results in the bucket without ever losing them: a failed upload is recorded as pending, and
`sync` uploads what is pending and every sealed run the bucket lacks."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llc.rundir import RunDir
from llc.storage import pending, s3

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

log = logging.getLogger(__name__)
NOT_RUNS = {"sweeps", "families", "wandb"}


def store_run(bucket: S3Bucket, runs_dir: Path, run_id: str, cached: bool, logger: Any = log) -> str | None:
    """Upload a sealed run (a cached one only when the bucket lacks it); its s3:// folder, or None
    when the upload failed and is now pending."""
    run_dir = RunDir(runs_dir, run_id)
    try:
        if not (cached and s3.run_is_uploaded(bucket, run_dir)):
            s3.upload_run(bucket, run_dir)
    except Exception as exc:
        logger.warning("upload of run %s is pending: %s: %s", run_id, type(exc).__name__, exc)
        pending.record(runs_dir, "run", run_id, exc)
        return None
    pending.clear(runs_dir, "run", run_id)
    return s3.run_uri(bucket, run_id)


def store_sweep(bucket: S3Bucket, runs_dir: Path, sweep_id: str, logger: Any = log) -> str | None:
    """Upload a sweep's tables; the results.csv link, or None when pending."""
    try:
        link = s3.upload_sweep(bucket, runs_dir / "sweeps" / sweep_id)
    except Exception as exc:
        logger.warning("upload of sweep %s is pending: %s: %s", sweep_id, type(exc).__name__, exc)
        pending.record(runs_dir, "sweep", sweep_id, exc)
        return None
    pending.clear(runs_dir, "sweep", sweep_id)
    return link


@dataclass
class SyncReport:
    runs: list[str] = field(default_factory=list)  # run_ids uploaded
    sweeps: list[str] = field(default_factory=list)  # sweep_ids uploaded
    pending: int = 0  # uploads still pending afterwards


def sync(bucket: S3Bucket, runs_dir: Path, missing: bool = True) -> SyncReport:
    """Upload every pending item; with `missing`, also every sealed local run the bucket lacks."""
    report = SyncReport()
    for entry in pending.pending(runs_dir):
        if not entry.local(runs_dir).exists():
            pending.clear(runs_dir, entry.kind, entry.name)  # deleted locally: nothing left to upload
        elif entry.kind == "run" and store_run(bucket, runs_dir, entry.name, cached=False):
            report.runs.append(entry.name)
        elif entry.kind == "sweep" and store_sweep(bucket, runs_dir, entry.name):
            report.sweeps.append(entry.name)
    if missing and not pending.pending(runs_dir):
        remote = s3.uploaded_manifests(bucket)
        for run_dir in local_runs(runs_dir):
            if remote.get(run_dir.run_id) != s3.manifest_md5(run_dir) and store_run(
                bucket, runs_dir, run_dir.run_id, cached=False
            ):
                report.runs.append(run_dir.run_id)
    report.pending = len(pending.pending(runs_dir))
    return report


def local_runs(runs_dir: Path) -> list[RunDir]:
    """Sealed, intact run directories under runs_dir."""
    if not runs_dir.is_dir():
        return []
    candidates = (p for p in sorted(runs_dir.iterdir()) if p.is_dir() and p.name not in NOT_RUNS)
    return [run for p in candidates if (run := RunDir(runs_dir, p.name)).is_complete()]
