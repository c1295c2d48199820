"""Results storage in a real S3-compatible server: upload, pending uploads and sync, pull, blocks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prefect_aws import AwsCredentials, S3Bucket
from typer.testing import CliRunner

from llc.cli import app
from llc.rundir import MANIFEST, RunDir
from llc.settings import load_settings
from llc.storage import pending, s3
from llc.storage.pull import pull_runs
from llc.storage.sync import store_run, store_sweep, sync

if TYPE_CHECKING:
    from s3_fixtures import S3Server

pytest_plugins = ["s3_fixtures"]


def sealed_run(runs: Path, run_id: str, value: int = 1) -> RunDir:
    run = RunDir(runs, run_id)
    run.prepare()
    run.write_json("config.json", {"run_id": run_id, "value": value})
    (run.path / "plots").mkdir()
    (run.path / "plots" / "trace.txt").write_text(f"trace of {run_id}\n" * 50)
    run.write_json("metrics.json", {"value": value})
    run.seal()
    return run


def local_files(run: RunDir) -> dict[str, bytes]:
    return {p.relative_to(run.path).as_posix(): p.read_bytes() for p in run.path.rglob("*") if p.is_file()}


def bucket() -> S3Bucket:
    opened = s3.open_bucket(load_settings())
    assert opened is not None
    return opened


def test_a_sealed_run_is_stored_whole_and_pulled_back_intact(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    run = sealed_run(runs, "r-one")
    assert store_run(bucket(), runs, "r-one", cached=False) == f"s3://llc-test/{s3_prefix}/runs/r-one/"
    stored = {k.removeprefix("runs/r-one/"): v for k, v in s3_server.objects(s3_prefix).items()}
    assert stored == local_files(run) and MANIFEST in stored and "plots/trace.txt" in stored
    assert not pending.pending(runs)

    (pulled,) = pull_runs(["r-one"], latest=False, runs_dir=tmp_path / "elsewhere")
    assert pulled == tmp_path / "elsewhere" / "r-one"
    assert RunDir(tmp_path / "elsewhere", "r-one").is_complete()
    assert local_files(RunDir(tmp_path / "elsewhere", "r-one")) == local_files(run)

    # The same through the command line, into a third place; an unknown run is an error, exit 1.
    result = CliRunner().invoke(
        app, ["pull-runs", "r-one", "--from", "s3", "--runs-dir", str(tmp_path / "cli")]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "cli" / "r-one")
    assert local_files(RunDir(tmp_path / "cli", "r-one")) == local_files(run)
    result = CliRunner().invoke(
        app, ["pull-runs", "r-nope", "--from", "s3", "--runs-dir", str(tmp_path / "cli")]
    )
    assert result.exit_code == 1 and "run r-nope is not in s3://llc-test/" in result.output


def test_a_cached_run_already_stored_is_not_uploaded_again_but_a_changed_one_is(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    sealed_run(runs, "r-two")
    store_run(bucket(), runs, "r-two", cached=False)
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}/runs/r-two/metrics.json")
    store_run(bucket(), runs, "r-two", cached=True)  # the remote manifest matches: nothing is sent
    assert "runs/r-two/metrics.json" not in s3_server.objects(s3_prefix)
    sealed_run(runs, "r-two", value=2)  # recomputed: a new manifest
    store_run(bucket(), runs, "r-two", cached=True)
    assert json.loads(s3_server.objects(s3_prefix)["runs/r-two/metrics.json"]) == {"value": 2}


def test_an_unreachable_store_leaves_uploads_pending_and_llc_sync_uploads_them(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    sealed_run(runs, "r-late")
    (runs / "sweeps" / "sw-1").mkdir(parents=True)
    (runs / "sweeps" / "sw-1" / "results.csv").write_text("sweep_id,cell,run_id,status\nsw-1,c,r-late,ok\n")
    monkeypatch.setenv("LLC_S3_ENDPOINT_URL", s3_server.closed_endpoint())  # nobody listens
    assert store_run(bucket(), runs, "r-late", cached=False) is None
    assert store_sweep(bucket(), runs, "sw-1") is None
    entries = {(e.kind, e.name) for e in pending.pending(runs)}
    assert entries == {("run", "r-late"), ("sweep", "sw-1")}
    assert "Could not connect" in pending.pending(runs)[0].error
    sealed_run(runs, "r-never-tried")  # sealed locally, never uploaded

    monkeypatch.setenv("LLC_S3_ENDPOINT_URL", s3_server.endpoint)
    synced = CliRunner().invoke(app, ["sync", "--runs-dir", str(runs)])
    assert synced.exit_code == 0, synced.output
    assert "2 runs, 1 sweeps uploaded; 0 pending" in synced.output
    assert pending.pending(runs) == [] and not list((runs / ".pending").iterdir())
    keys = set(s3_server.objects(s3_prefix))
    assert {"runs/r-late/complete.json", "runs/r-never-tried/complete.json"} <= keys
    assert "sweeps/sw-1/results.csv" in keys
    assert sync(bucket(), runs).runs == []  # everything is there: nothing sent twice

    (pulled,) = pull_runs([], latest=True, runs_dir=tmp_path / "fresh")
    assert pulled.name == "r-late" and RunDir(tmp_path / "fresh", "r-late").is_complete()


def test_a_stored_copy_that_fails_its_checksums_is_not_pulled(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    sealed_run(runs, "r-bad")
    store_run(bucket(), runs, "r-bad", cached=False)
    s3_server.client().put_object(
        Bucket=s3_server.bucket, Key=f"{s3_prefix}/runs/r-bad/metrics.json", Body=b"{}"
    )
    with pytest.raises(ValueError, match="does not match its manifest"):
        pull_runs(["r-bad"], latest=False, runs_dir=tmp_path / "elsewhere")
    assert not (tmp_path / "elsewhere" / "r-bad").exists()
    with pytest.raises(FileNotFoundError, match="r-absent"):
        pull_runs(["r-absent"], latest=False, runs_dir=tmp_path / "elsewhere")


def test_the_bucket_can_come_from_a_saved_s3bucket_block(
    prefect_server: str, s3_server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = AwsCredentials(
        aws_access_key_id=s3_server.access_key, aws_secret_access_key=s3_server.secret_key,
        region_name="us-east-1", aws_client_parameters={"endpoint_url": s3_server.endpoint},
    )  # fmt: skip
    S3Bucket(bucket_name=s3_server.bucket, credentials=credentials, bucket_folder="from-block").save(
        "llc-test-results", overwrite=True
    )
    monkeypatch.setenv("LLC_S3_BLOCK", "llc-test-results")
    runs = tmp_path / "runs"
    sealed_run(runs, "r-block")
    assert store_run(bucket(), runs, "r-block", cached=False) == "s3://llc-test/from-block/runs/r-block/"
    assert "runs/r-block/complete.json" in s3_server.objects("from-block")
