"""The results bucket: a prefect-aws S3Bucket, from a saved block or from LLC_S3_* settings.

Objects: <prefix>/runs/<run_id>/<file> (a sealed run directory, its manifest complete.json last, so a
remote manifest means a complete copy) and <prefix>/sweeps/<sweep_id>/<file> (a sweep's tables).
Keys travel inside the credentials block or the boto3 session, never through llc's own values.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llc.rundir import MANIFEST, RunDir
from llc.settings import Settings

if TYPE_CHECKING:
    from prefect_aws import S3Bucket

# A store that is down should cost a cell seconds, not minutes of botocore's default retries.
CLIENT_CONFIG = {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 2, "mode": "standard"}}
# The figures summary.md links, so that its links hold in the bucket too (those the sweep has).
SWEEP_FILES = (
    "results.csv", "errors.csv", "summary.md", "study.json", "plots/llc_by_sampler.png",
    "plots/llc_over_training.png", "plots/llc_by_step.png",
)  # fmt: skip


def configured(settings: Settings) -> bool:
    return bool(settings.s3_block or settings.s3_bucket)


def open_bucket(settings: Settings) -> S3Bucket | None:
    """The bucket the settings name (a block, else bucket + endpoint + prefix), or None without S3."""
    if not configured(settings):
        return None
    try:
        from prefect_aws import AwsCredentials, S3Bucket
    except ImportError:
        raise RuntimeError("S3 storage needs prefect-aws: pip install 'llc[s3]'") from None
    if settings.s3_block:
        return S3Bucket.load(settings.s3_block, _sync=True)  # type: ignore[call-arg]
    if settings.s3_credentials_block:
        credentials = AwsCredentials.load(settings.s3_credentials_block, _sync=True)  # type: ignore[call-arg]
    else:
        # No keys given: boto3 reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE itself.
        credentials = AwsCredentials(
            aws_client_parameters={"endpoint_url": settings.s3_endpoint_url, "config": CLIENT_CONFIG}
        )
    return S3Bucket(bucket_name=settings.s3_bucket, credentials=credentials, bucket_folder=settings.s3_prefix)


def task_result_storage(bucket: S3Bucket) -> S3Bucket:
    """The bucket's prefect-results/ folder as a block saved on the Prefect server, as Prefect's result
    storage must be. Saved as `llc-results-<hash>`: bucket, endpoint and folder, plus a reference to a
    saved credentials block; keys from the environment stay there."""
    params = bucket.credentials.aws_client_parameters
    folder = key(bucket, "prefect-results")
    what = f"{bucket.bucket_name}|{params.endpoint_url}|{folder}"
    storage = bucket.model_copy(update={"bucket_folder": folder})
    storage.save(f"llc-results-{hashlib.sha256(what.encode()).hexdigest()[:10]}", overwrite=True)
    return storage


def key(bucket: S3Bucket, *parts: str) -> str:
    return "/".join(p.strip("/") for p in (bucket.bucket_folder, *parts) if p.strip("/"))


def uri(bucket: S3Bucket, object_key: str) -> str:
    return f"s3://{bucket.bucket_name}/{object_key}"


def run_uri(bucket: S3Bucket, run_id: str) -> str:
    return uri(bucket, key(bucket, "runs", run_id)) + "/"


def sweep_uri(bucket: S3Bucket, sweep_id: str, name: str = "results.csv") -> str:
    return uri(bucket, key(bucket, "sweeps", sweep_id, name))


def client(bucket: S3Bucket) -> Any:
    """The block's boto3 client (cached by prefect-aws); used directly so uploads stay out of run logs."""
    return bucket.credentials.get_s3_client()


def upload_run(bucket: S3Bucket, run_dir: RunDir) -> str:
    """Upload a sealed run directory, manifest last; returns its s3:// folder."""
    if not run_dir.is_complete():
        raise ValueError(f"{run_dir.path} is not a sealed run directory")
    s3 = client(bucket)
    files = sorted(p for p in run_dir.path.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in sorted(files, key=lambda p: p.name == MANIFEST):
        relative = path.relative_to(run_dir.path).as_posix()
        s3.upload_file(str(path), bucket.bucket_name, key(bucket, "runs", run_dir.run_id, relative))
    return run_uri(bucket, run_dir.run_id)


def run_is_uploaded(bucket: S3Bucket, run_dir: RunDir) -> bool:
    """The bucket holds this very run: its manifest object has the local manifest's MD5 (one HEAD)."""
    try:
        head = client(bucket).head_object(
            Bucket=bucket.bucket_name, Key=key(bucket, "runs", run_dir.run_id, MANIFEST)
        )
    except Exception as exc:
        if _status(exc) == 404:
            return False
        raise
    return head["ETag"].strip('"') == _md5(run_dir.path / MANIFEST)


def uploaded_manifests(bucket: S3Bucket) -> dict[str, str]:
    """run_id -> ETag of every run manifest in the bucket, from one listing."""
    pages = (
        client(bucket)
        .get_paginator("list_objects_v2")
        .paginate(Bucket=bucket.bucket_name, Prefix=key(bucket, "runs") + "/")
    )
    found = {}
    for page in pages:
        for item in page.get("Contents", []):
            *_, run_id, name = item["Key"].split("/")
            if name == MANIFEST:
                found[run_id] = item["ETag"].strip('"')
    return found


def manifest_md5(run_dir: RunDir) -> str:
    return _md5(run_dir.path / MANIFEST)


def upload_sweep(bucket: S3Bucket, folder: Path) -> str:
    """Upload a sweep's tables (results.csv last, the file its link points at); returns that link."""
    s3 = client(bucket)
    names = [n for n in SWEEP_FILES if (folder / n).exists()]
    for name in sorted(names, key=lambda n: n == "results.csv"):
        s3.upload_file(str(folder / name), bucket.bucket_name, key(bucket, "sweeps", folder.name, name))
    return sweep_uri(bucket, folder.name)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()


def _status(exc: Exception) -> int | None:
    response = getattr(exc, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None
