"""A sweep with S3 configured: runs, tables and Prefect task results land in a real bucket, links point
at them, and a store that stops mid-sweep loses nothing."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import State
from sweep_probe import probe_study, rows_by_cell
from typer.testing import CliRunner

from llc.cli import app
from llc.rundir import RunDir
from llc.storage import pending
from llc.sweeps.flow import sweep

if TYPE_CHECKING:
    from s3_fixtures import S3Server

pytest_plugins = ["s3_fixtures"]
pytestmark = pytest.mark.usefixtures("prefect_server")


def run(study: dict[str, Any], runs: Path) -> tuple[State[Any], dict[str, Any]]:
    state = sweep(study=study, runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    return state, state.result()


def artifacts_of(state: State[Any]) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    return {a.key: a for a in found}


def test_a_sweep_stores_every_run_its_tables_and_task_results_and_links_to_them(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    study = probe_study(tmp_path / "markers", [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    state, result = run(study, runs)
    rows = rows_by_cell(result["results"])
    stored = s3_server.objects(s3_prefix)
    for row in rows.values():
        run_dir = RunDir(runs, row["run_id"])
        for path in run_dir.path.rglob("*"):
            if path.is_file():
                key = f"runs/{row['run_id']}/{path.relative_to(run_dir.path).as_posix()}"
                assert stored[key] == path.read_bytes(), key
    sweep_id, flow_run_id = result["sweep_id"], state.state_details.flow_run_id
    for name in ("results.csv", "errors.csv", "summary.md", "study.json"):
        assert stored[f"sweeps/{sweep_id}/{name}"] == (runs / "sweeps" / sweep_id / name).read_bytes()
    for cell in rows:
        task_result = json.loads(stored[f"prefect-results/{flow_run_id}/{cell}.json"])
        record = json.loads(task_result["result"])["data"]  # the CellRecord, by Prefect's JSON serializer
        assert (record["cell"], record["status"], record["run_id"]) == (cell, "ok", rows[cell]["run_id"])
    assert (result["stored"], result["pending_uploads"]) == (
        f"s3://llc-test/{s3_prefix}/sweeps/{sweep_id}/results.csv",
        0,
    )

    found = artifacts_of(state)
    link = found[f"sweep-{sweep_id}-stored-results"]
    assert (link.type, link.data) == ("markdown", f"[{result['stored']}]({result['stored']})")
    for cell, row in rows.items():
        folder = f"s3://llc-test/{s3_prefix}/runs/{row['run_id']}/"
        assert f"| {cell} | ok |" in found[f"sweep-{sweep_id}-runs"].data
        assert f"[{folder}]({folder})" in found[f"sweep-{sweep_id}-runs"].data
    assert "uploads pending: 0" in found[f"sweep-{sweep_id}-summary"].data

    # A cached cell whose run is in the bucket (its manifest matches) is not sent again.
    gone = f"runs/{rows['a-s0']['run_id']}/output.txt"
    s3_server.client().delete_object(Bucket=s3_server.bucket, Key=f"{s3_prefix}/{gone}")
    _, again = run(study, runs)
    assert (again["cached"], again["pending_uploads"]) == (3, 0)
    run_keys = {k for k in s3_server.objects(s3_prefix) if k.startswith("runs/")}
    assert run_keys == {k for k in stored if k.startswith("runs/")} - {gone}


def test_a_store_stopped_mid_sweep_keeps_results_locally_and_sync_uploads_them_when_back(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    study = probe_study(
        tmp_path / "markers", [{"name": "early"}, {"name": "late", "overrides": {"sleep_s": 7}}]
    )

    def stop_after_first_upload() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(k.endswith("/complete.json") for k in s3_server.objects(s3_prefix)):
                s3_server.stop()
                return
            time.sleep(0.2)

    stopper = threading.Thread(target=stop_after_first_upload)
    stopper.start()
    try:
        state, result = run(study, runs)
    finally:
        stopper.join()
        s3_server.start()
    rows = rows_by_cell(result["results"])
    assert {c: r["status"] for c, r in rows.items()} == {"early-s0": "ok", "late-s0": "ok"}
    late = rows["late-s0"]["run_id"]
    assert RunDir(runs, late).is_complete()  # the local copy is whole
    assert {(e.kind, e.name) for e in pending.pending(runs)} == {("run", late), ("sweep", result["sweep_id"])}
    assert result["pending_uploads"] == 2 and result["stored"] is None
    summary = artifacts_of(state)[f"sweep-{result['sweep_id']}-summary"].data
    assert "uploads pending: 2" in summary
    assert "runs/" + late + "/complete.json" not in s3_server.objects(s3_prefix)

    synced = CliRunner().invoke(app, ["sync", "--runs-dir", str(runs)])
    assert synced.exit_code == 0, synced.output
    stored = s3_server.objects(s3_prefix)
    assert stored[f"runs/{late}/complete.json"] == (runs / late / "complete.json").read_bytes()
    results = runs / "sweeps" / result["sweep_id"] / "results.csv"
    assert stored[f"sweeps/{result['sweep_id']}/results.csv"] == results.read_bytes()
    assert pending.pending(runs) == []


def test_the_figures_that_summary_md_links_are_stored_beside_it(
    s3_server: S3Server, s3_prefix: str, tmp_path: Path
) -> None:
    for step, llc in ((10, 1.0), (100, 2.0)):
        (tmp_path / f"ckpt_{step}.txt").write_text(f"llc={llc} L0={1 / step}\n")
    study = probe_study(tmp_path / "markers", [{"name": "a"}])
    study["base"]["weights"] = str(tmp_path / "ckpt_*.txt")
    _, result = run(study, tmp_path / "runs")
    out, stored = Path(result["results"]).parent, s3_server.objects(s3_prefix)
    summary = stored[f"sweeps/{result['sweep_id']}/summary.md"].decode()
    for name in ("llc_by_step.png", "llc_over_training.png"):
        assert f"](plots/{name})" in summary
        assert stored[f"sweeps/{result['sweep_id']}/plots/{name}"] == (out / "plots" / name).read_bytes()
