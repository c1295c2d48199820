"""No secret value reaches a file a sweep wrote, the bucket, a Prefect log or artifact, or a log record."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from prefect.blocks.system import Secret
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogWorker
from sweep_probe import probe_study

from llc.cells import tracking
from llc.settings import Settings
from llc.sweeps.flow import sweep

if TYPE_CHECKING:
    from s3_fixtures import S3Server

pytest_plugins = ["s3_fixtures"]
pytestmark = pytest.mark.usefixtures("prefect_server")

WANDB_KEY = "fakewandbkey" + "7d1e" * 7  # 40 characters, as W&B keys are
BLOCK_KEY = "fakeblockkey" + "9a2c" * 7


def leaks(text: str, secrets: list[str]) -> list[str]:
    return [s for s in secrets if s in text]


def test_the_scan_finds_a_secret_where_there_is_one() -> None:
    assert leaks(f"log line with {WANDB_KEY} inside", [WANDB_KEY, BLOCK_KEY]) == [WANDB_KEY]


def test_no_secret_value_is_written_to_files_bucket_logs_or_artifacts(
    s3_server: S3Server,
    s3_prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("WANDB_API_KEY", WANDB_KEY)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    secrets = [WANDB_KEY, s3_server.secret_key]
    runs = tmp_path / "runs"
    study = probe_study(
        tmp_path / "markers",
        [{"name": "fine"}, {"name": "bad", "overrides": {"fail": "valueerror"}}],
        wandb_mode="offline",
        retries=0,
    )
    state = sweep(study=study, runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    APILogWorker.drain_all(timeout=10)  # the logs reach the server before they are read back

    files = [p for p in runs.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"study.json", "config.json", "results.csv", "errors.csv", "summary.md", "debug.log"} <= names
    assert any(p.suffix == ".wandb" for p in files)  # W&B wrote its offline run and logs here
    for path in files:
        assert not leaks(path.read_bytes().decode(errors="replace"), secrets), path

    objects = s3_server.objects(s3_prefix)
    assert {k.split("/")[0] for k in objects} == {"prefect-results", "runs", "sweeps"}
    for object_key, body in objects.items():
        assert not leaks(body.decode(errors="replace"), secrets), object_key

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        flow_run = client.read_flow_run(flow_run_id)
    assert len(logs) >= 3 and len(found) >= 4
    assert not leaks("\n".join(log.message for log in logs), secrets)
    assert not leaks("\n".join(f"{a.data} {a.description}" for a in found), secrets)
    assert not leaks(flow_run.model_dump_json(), secrets)

    # Every record that went through Python logging in this process, whatever its handler.
    assert "Finished in state" in caplog.text and "finished in" in caplog.text
    assert not leaks(caplog.text, secrets)


def test_the_wandb_key_from_a_secret_block_reaches_online_runs_through_the_environment_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    Secret(value=BLOCK_KEY).save("llc-test-wandb-key", overwrite=True)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    settings = Settings(wandb_api_key_block="llc-test-wandb-key")
    tracking.export_api_key(settings, "offline")
    assert "WANDB_API_KEY" not in os.environ  # offline runs need no key: the block is not even read
    tracking.export_api_key(settings, "online")
    assert os.environ["WANDB_API_KEY"] == BLOCK_KEY
    assert tracking.redact(f"failed with {BLOCK_KEY}") == "failed with ***"
    assert BLOCK_KEY not in repr(settings) and BLOCK_KEY not in settings.model_dump_json()
