"""Fetch run directories from the bucket into a local runs directory (`llc pull-runs --from s3`)."""

from __future__ import annotations

import csv
import io
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from llc.rundir import RunDir
from llc.settings import load_settings
from llc.storage import s3

if TYPE_CHECKING:
    from prefect_aws import S3Bucket


def pull_runs(run_ids: list[str], latest: bool, runs_dir: Path, bucket: S3Bucket | None = None) -> list[Path]:
    """The run directories of `run_ids` (and, with `latest`, of the most recently stored sweep's cells),
    each fetched unless already sealed locally; a fetched copy must pass its checksums to be kept."""
    bucket = bucket or s3.open_bucket(load_settings())
    if bucket is None:
        raise RuntimeError("no S3 bucket configured: set LLC_S3_BLOCK or LLC_S3_BUCKET (docs/storage.md)")
    wanted = list(dict.fromkeys([*run_ids, *(latest_sweep_runs(bucket) if latest else [])]))
    return [_pull(bucket, run_id, Path(runs_dir)) for run_id in wanted]


def latest_sweep_runs(bucket: S3Bucket) -> list[str]:
    """run_ids of the sweep whose results.csv was stored last."""
    client = s3.client(bucket)
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=bucket.bucket_name, Prefix=s3.key(bucket, "sweeps") + "/"
    )
    tables = [o for page in pages for o in page.get("Contents", []) if o["Key"].endswith("/results.csv")]
    if not tables:
        raise FileNotFoundError(f"no sweep in {s3.uri(bucket, s3.key(bucket, 'sweeps'))}")
    newest = max(tables, key=lambda o: o["LastModified"])
    body = client.get_object(Bucket=bucket.bucket_name, Key=newest["Key"])["Body"].read().decode()
    return [row["run_id"] for row in csv.DictReader(io.StringIO(body)) if row.get("status") == "ok"]


def _pull(bucket: S3Bucket, run_id: str, runs_dir: Path) -> Path:
    target = RunDir(runs_dir, run_id)
    if target.is_complete():
        return target.path
    client = s3.client(bucket)
    prefix = s3.key(bucket, "runs", run_id) + "/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket.bucket_name, Prefix=prefix)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    if not keys:
        raise FileNotFoundError(f"run {run_id} is not in {s3.run_uri(bucket, run_id)}")
    runs_dir.mkdir(parents=True, exist_ok=True)
    # Fetched beside its place, checked, then renamed in: a torn download never looks like a result.
    with tempfile.TemporaryDirectory(dir=runs_dir, prefix=f".pull-{run_id}-") as tmp:
        copy = RunDir(Path(tmp), run_id)
        for object_key in keys:
            path = copy.path / object_key.removeprefix(prefix)
            path.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket.bucket_name, object_key, str(path))
        if not copy.is_complete():
            raise ValueError(f"run {run_id} in the bucket does not match its manifest; not pulled")
        shutil.rmtree(target.path, ignore_errors=True)
        copy.path.rename(target.path)
    return target.path
