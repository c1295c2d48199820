"""The Prefect server path: deployments from prefect.yaml, a run through a process worker, its artifacts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING
from uuid import UUID

from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.client.schemas.schedules import CronSchedule

from llc.rundir import MANIFEST
from llc.sweeps.results import read_results

if TYPE_CHECKING:
    from prefect_fixtures import DeploymentRun, PrefectServer
    from s3_fixtures import S3Server

pytest_plugins = ["prefect_fixtures", "s3_fixtures"]

DEPLOYMENTS = ("local", "slurm", "modal")
CELLS = {"alpha-s0": "Completed", "beta-s0": "Completed", "broken-s0": "Failed"}


def results_csv(run: DeploymentRun) -> Path:
    (path,) = (run.runs_dir / "sweeps").glob("*/results.csv")
    return path


def test_deploy_all_registers_sweep_local_slurm_and_modal_on_the_process_pool(
    sweep_deployments: PrefectServer,
) -> None:
    with sweep_deployments.client() as client:
        pool = client.read_work_pool("llc-process")
        deployments = {name: client.read_deployment_by_name(f"sweep/{name}") for name in DEPLOYMENTS}
    assert pool.type == "process"
    for name, deployment in deployments.items():
        assert deployment.entrypoint == "flows/sweep.py:sweep"
        assert (deployment.work_pool_name, deployment.work_queue_name) == ("llc-process", name)
        assert deployment.parameters == {"study": "studies/quick.yaml", "backend": name}
        # The code is found on the worker when the run starts, not at a path baked in at deploy time.
        assert deployment.path is None
        assert deployment.pull_steps == [{"llc.launch.deployment.project_directory": {}}]
    (schedule,) = deployments["slurm"].schedules
    assert (schedule.schedule.cron, schedule.active) == ("0 2 * * *", False)
    assert deployments["local"].schedules == [] and deployments["modal"].schedules == []


def test_a_deployment_run_takes_the_study_to_completed_with_one_task_run_per_cell(
    sweep_run: DeploymentRun, sweep_deployments: PrefectServer
) -> None:
    flow_run_id = UUID(sweep_run.flow_run_id)
    with sweep_deployments.client() as client:
        flow_run = client.read_flow_run(flow_run_id)
        deployment = client.read_deployment_by_name("sweep/local")
        task_runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    assert flow_run.state_name == "Completed", sweep_run.worker_output
    assert flow_run.name == f"server-probe-{str(flow_run_id)[:6]}"  # the study's name and a short id
    assert flow_run.deployment_id == deployment.id
    assert flow_run.parameters["backend"] == "local"  # the deployment's default, merged with the run's
    assert {t.name: t.state_name for t in task_runs} == CELLS
    # The run's runs_dir parameter reached the flow: the table is there, not in the repository's runs/.
    rows = {row["cell"]: row for row in read_results(results_csv(sweep_run))}
    assert {cell: row["status"] for cell, row in rows.items()} == {
        "alpha-s0": "ok", "beta-s0": "ok", "broken-s0": "error",
    }  # fmt: skip
    assert rows["beta-s0"]["value"] == 4.0 and rows["broken-s0"]["error_type"] == "ValueError"


def test_the_sweep_publishes_its_results_summary_progress_and_run_links_as_artifacts(
    sweep_run: DeploymentRun, sweep_deployments: PrefectServer
) -> None:
    sweep_id = results_csv(sweep_run).parent.name
    with sweep_deployments.client() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(sweep_run.flow_run_id)])
            )
        )
    by_key = {artifact.key: artifact for artifact in found}
    prefix = f"sweep-{sweep_id}"
    # With a bucket configured the sweep adds a `-stored-results` link; these four are always there.
    assert set(by_key) >= {f"{prefix}-results", f"{prefix}-summary", f"{prefix}-runs", f"{prefix}-progress"}
    assert all(key.startswith(prefix) for key in by_key)
    assert {by_key[f"{prefix}-{kind}"].type for kind in ("results", "summary", "runs", "progress")} == {
        "table", "markdown", "progress",
    }  # fmt: skip
    table = by_key[f"{prefix}-results"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert sorted((row["cell"], row["status"]) for row in rows) == [
        ("alpha-s0", "ok"), ("beta-s0", "ok"), ("broken-s0", "error"),
    ]  # fmt: skip
    summary = str(by_key[f"{prefix}-summary"].data)
    assert f"# Sweep `{sweep_id}`" in summary and "| 3 | 2 | 1 | 0 |" in summary and "broken-s0" in summary
    links = str(by_key[f"{prefix}-runs"].data)
    assert all(cell in links for cell in CELLS) and str(sweep_run.runs_dir) in links
    assert by_key[f"{prefix}-progress"].data == 100.0


def test_a_schedule_added_in_the_ui_survives_a_redeploy_and_prefect_yaml_schedules_are_not_duplicated(
    sweep_deployments: PrefectServer,
) -> None:
    with sweep_deployments.client() as client:
        local = client.read_deployment_by_name("sweep/local")
        # The same API call the UI's "+ Schedule" makes; inactive, so the test server schedules no runs.
        client.create_deployment_schedules(
            local.id, [(CronSchedule(cron="30 4 * * 1", timezone="UTC"), False)]
        )
    sweep_deployments.deploy()
    with sweep_deployments.client() as client:
        local = client.read_deployment_by_name("sweep/local")
        slurm = client.read_deployment_by_name("sweep/slurm")
    assert [s.schedule.cron for s in local.schedules] == ["30 4 * * 1"]
    assert [s.schedule.cron for s in slurm.schedules] == ["0 2 * * *"]


def test_the_deployment_runs_results_are_in_the_bucket_and_its_link_artifact_points_there(
    sweep_run: DeploymentRun, sweep_deployments: PrefectServer, s3_server: S3Server
) -> None:
    from prefect_fixtures import E2E_S3_PREFIX

    stored = s3_server.objects(E2E_S3_PREFIX)
    rows = {row["cell"]: row for row in read_results(results_csv(sweep_run))}
    sweep_id = results_csv(sweep_run).parent.name
    for cell in ("alpha-s0", "beta-s0"):  # every ok cell's run directory, whole and byte-identical
        run_dir = Path(rows[cell]["run_dir"])
        local = {p.relative_to(run_dir).as_posix(): p.read_bytes() for p in run_dir.rglob("*") if p.is_file()}
        remote = {
            key.removeprefix(f"runs/{run_dir.name}/"): body
            for key, body in stored.items()
            if key.startswith(f"runs/{run_dir.name}/")
        }
        assert MANIFEST in remote and remote == local
    assert stored[f"sweeps/{sweep_id}/results.csv"] == results_csv(sweep_run).read_bytes()
    assert {f"sweeps/{sweep_id}/{name}" for name in ("errors.csv", "summary.md", "study.json")} <= set(stored)
    task_results = [key for key in stored if key.startswith(f"prefect-results/{sweep_run.flow_run_id}/")]
    assert len(task_results) == 2  # the two ok cells' Prefect task results
    with sweep_deployments.client() as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[UUID(sweep_run.flow_run_id)])
            )
        )
    link = next(a for a in found if a.key == f"sweep-{sweep_id}-stored-results")
    assert f"s3://llc-test/{E2E_S3_PREFIX}/sweeps/{sweep_id}/results.csv" in str(link.data)


def test_a_plain_prefect_worker_without_llc_project_dir_runs_the_sweep(
    sweep_deployments: PrefectServer, tmp_path: Path
) -> None:
    from prefect_fixtures import probe_study_file, run_deployment

    run = run_deployment(
        sweep_deployments, probe_study_file(tmp_path / "study"), tmp_path / "runs", tmp_path / "worker",
        plain_worker=True,
    )  # fmt: skip
    with sweep_deployments.client() as client:
        flow_run = client.read_flow_run(UUID(run.flow_run_id))
    assert flow_run.state_name == "Completed", run.worker_output
    assert len(read_results(results_csv(run))) == 3


def test_a_bad_study_fails_the_deployment_run_with_one_message_as_its_state(
    sweep_deployments: PrefectServer, tmp_path: Path
) -> None:
    from prefect_fixtures import run_deployment

    study = tmp_path / "bad.yaml"
    study.write_text("name: bad\nsamplers: []\n")
    run = run_deployment(sweep_deployments, study, tmp_path / "runs", tmp_path / "worker")
    with sweep_deployments.client() as client:
        flow_run = client.read_flow_run(UUID(run.flow_run_id))
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run.flow_run_id)])))
    assert flow_run.state_name == "Failed"
    assert (
        flow_run.state.message == f"invalid study:\n  {study}:2: samplers: an empty list runs nothing: "
        "list at least one entry, or leave the key out"
    )
    # The flow returned the failure, it raised nothing: no "Encountered exception" with our traceback.
    # (Prefect's engine still logs its own "exited with unexpected exception" after any Failed run.)
    messages = "\n".join(log.message for log in logs)
    assert "samplers: an empty list" in messages and "Encountered exception" not in messages, messages
    assert not (tmp_path / "runs").exists()
