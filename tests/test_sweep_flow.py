"""The sweep flow on a real Prefect server: retries, timeouts, caching, damage, bad studies, artifacts."""

from __future__ import annotations

import inspect
import os
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)
from prefect.states import State
from sweep_probe import executions, pids, probe_study, rows_by_cell
from typer.testing import CliRunner

from llc.cli import app
from llc.rundir import RunDir
from llc.sweeps import options
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep

pytestmark = pytest.mark.usefixtures("prefect_server")


def run(study: dict[str, Any] | str, runs: Path, **params: Any) -> tuple[State[Any], dict[str, Any]]:
    state = sweep(study=study, runs_dir=str(runs), return_state=True, **params)
    return state, (state.result() if state.is_completed() else {})


def task_states(state: State[Any]) -> dict[str, str]:
    """Final state name of each task run of the flow run, by task run name (the cell)."""
    with get_client(sync_client=True) as client:
        flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        return {t.name: t.state_name for t in client.read_task_runs(flow_run_filter=flow_filter)}


def test_failing_cells_are_retried_when_worth_it_recorded_and_the_others_finish(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    study = probe_study(
        markers,
        [
            {"name": "fine"},
            {"name": "flaky", "overrides": {"fail": "oserror"}},
            {"name": "recovers", "overrides": {"fail": "oserror", "fail_times": 1}},
            {"name": "crashes", "overrides": {"fail": "crash", "fail_times": 1}},
            {"name": "bad", "overrides": {"fail": "valueerror"}},
        ],
    )
    state, result = run(study, tmp_path / "runs")
    assert state.is_completed(), state.message
    rows = rows_by_cell(result["results"])
    outcome = {cell: (r["status"], r["error_type"], r["attempts"]) for cell, r in rows.items()}
    assert outcome == {
        "fine-s0": ("ok", None, 1),
        "flaky-s0": ("error", "ConnectionError", 3),  # retried twice, then recorded
        "recovers-s0": ("ok", None, 2),
        "crashes-s0": ("ok", None, 2),  # its worker was SIGKILLed; a fresh one succeeded
        "bad-s0": ("error", "ValueError", 1),  # a bad value is not retried
    }
    runs = {cell: executions(markers).get(r["run_id"]) for cell, r in rows.items()}
    assert runs == {"fine-s0": 1, "flaky-s0": 3, "recovers-s0": 2, "crashes-s0": 2, "bad-s0": 1}
    assert (result["total"], result["ok"], result["failed"]) == (5, 3, 2)
    errors = Path(result["errors"]).read_text()
    assert "flaky resource (execution 3)" in errors and "raise ValueError" in errors
    assert task_states(state) == {
        "fine-s0": "Completed", "recovers-s0": "Completed", "crashes-s0": "Completed",
        "flaky-s0": "Failed", "bad-s0": "Failed",
    }  # fmt: skip


def test_a_hanging_cell_is_killed_at_its_timeout_and_recorded_as_a_timeout(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    study = probe_study(
        markers, [{"name": "hangs", "overrides": {"fail": "hang"}}, {"name": "fine"}], timeout_s=2
    )
    started = time.monotonic()
    state, result = run(study, tmp_path / "runs")
    assert state.is_completed(), state.message
    assert time.monotonic() - started < 30  # the hang would last an hour
    rows = rows_by_cell(result["results"])
    hang = rows["hangs-s0"]
    assert (hang["status"], hang["error_type"], hang["stage"], hang["attempts"]) == (
        "error",
        "Timeout",
        "run",
        1,
    )
    assert 2 <= hang["duration_s"] < 10
    assert rows["fine-s0"]["status"] == "ok"
    for pid in pids(markers):  # the hanging worker process is gone, not left sleeping
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not RunDir(tmp_path / "runs", hang["run_id"]).is_complete()


def test_a_cells_timeout_counts_from_when_it_begins_not_from_its_workers_slow_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(4)\n")  # a worker starting on busy cores
    monkeypatch.syspath_prepend(str(slow))  # workers inherit this process's import path
    study = probe_study(tmp_path / "markers", [{"name": "fine", "overrides": {"sleep_s": 0.5}}], timeout_s=2)
    state, result = run(study, tmp_path / "runs")
    assert state.is_completed(), state.message
    row = rows_by_cell(result["results"])["fine-s0"]
    assert (row["status"], row["attempts"]) == ("ok", 1), row


def test_complete_results_are_reused_and_no_skip_recomputes(tmp_path: Path) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    study = probe_study(markers, [{"name": "a"}, {"name": "b"}, {"name": "c"}])
    run(study, runs)
    assert sorted(executions(markers).values()) == [1, 1, 1]
    _, again = run(study, runs)
    assert (again["cached"], again["ok"]) == (3, 3)
    assert sorted(executions(markers).values()) == [1, 1, 1]
    assert {r["cached"] for r in rows_by_cell(again["results"]).values()} == {True}
    _, forced = run(study, runs, skip=False)
    assert (forced["cached"], forced["ok"]) == (0, 3)
    assert sorted(executions(markers).values()) == [2, 2, 2]


def test_a_truncated_or_corrupted_run_directory_is_detected_and_recomputed(tmp_path: Path) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    study = probe_study(markers, [{"name": "truncated"}, {"name": "corrupted"}, {"name": "intact"}])
    _, first = run(study, runs)
    rows = rows_by_cell(first["results"])
    truncated, corrupted = (Path(rows[c]["run_dir"]) for c in ("truncated-s0", "corrupted-s0"))
    output = truncated / "output.txt"
    output.write_bytes(output.read_bytes()[:10])
    metrics = corrupted / "metrics.json"
    metrics.write_bytes(metrics.read_bytes().replace(b"1", b"7", 1))
    _, second = run(study, runs)
    rows = rows_by_cell(second["results"])
    assert {c: r["cached"] for c, r in rows.items()} == {
        "truncated-s0": False,
        "corrupted-s0": False,
        "intact-s0": True,
    }
    assert {c: executions(markers)[r["run_id"]] for c, r in rows.items()} == {
        "truncated-s0": 2, "corrupted-s0": 2, "intact-s0": 1,
    }  # fmt: skip
    assert all(RunDir(runs, r["run_id"]).is_complete() for r in rows.values())


def test_a_bad_study_fails_the_flow_with_the_line_before_any_cell_is_submitted(tmp_path: Path) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    study = tmp_path / "bad.yaml"
    study.write_text(
        "experiment: sweep_probe:Probe\n"
        f"base: {{markers: {markers}}}\n"
        "problems:\n"
        "  - name: fine\n"
        "  - name: typo\n"
        "    overrides: {sleep_sec: 1}\n"
    )
    state, _ = run(str(study), runs)
    assert state.is_failed()
    assert f"{study}:6: sleep_sec: unknown key (did you mean 'sleep_s'?)" in state.message
    assert task_states(state) == {}
    assert not markers.exists() and not runs.exists()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"max_parallel": 0}, "max_parallel: Input should be greater than or equal to 1 (got 0)"),
        ({"backend": "lokal"}, "unknown backend 'lokal'; choose one of local, modal, slurm"),
    ],
)
def test_a_bad_option_given_to_the_flow_fails_it_with_one_line_before_anything_is_written(
    tmp_path: Path, params: dict[str, Any], message: str
) -> None:
    markers, runs = tmp_path / "markers", tmp_path / "runs"
    state, _ = run(probe_study(markers, [{"name": "a"}]), runs, **params)
    assert state.is_failed() and state.message == message
    assert task_states(state) == {}
    assert not markers.exists() and not runs.exists()


def test_a_sweep_from_the_cli_is_planned_once_and_its_flow_run_shows_the_options_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study, runs = tmp_path / "probe.yaml", tmp_path / "runs"
    study.write_text(f"experiment: sweep_probe:Probe\nbase: {{markers: {tmp_path}/m}}\nseeds: [0, 1]\n")
    planned: list[Any] = []

    def counted(source: Any) -> Any:
        planned.append(source)
        return plan_sweep(source)

    monkeypatch.setattr(options, "plan_sweep", counted)
    argv = ["sweep", "--study", str(study), "--runs-dir", str(runs), "--max-parallel", "1"]
    ran = CliRunner().invoke(app, [*argv, "--backend-option", "threads_per_cell=1"])
    assert ran.exit_code == 0, ran.output
    assert planned == [study]  # checked by the launcher, then run by the flow as it was planned
    with get_client(sync_client=True) as client:
        (flow_run,) = [r for r in client.read_flow_runs() if r.parameters.get("runs_dir") == str(runs)]
    assert flow_run.name == f"probe-{str(flow_run.id)[:6]}"
    assert flow_run.parameters == {
        "study": str(study), "backend": None, "runs_dir": str(runs), "skip": True, "max_parallel": 1,
        "timeout_s": None, "retries": None, "backend_options": {"threads_per_cell": 1},
    }  # fmt: skip


def test_the_flows_parameters_are_the_sweep_options() -> None:
    assert set(inspect.signature(sweep.fn).parameters) == set(options.SweepOptions.model_fields)


def test_artifacts_hold_the_table_the_summary_full_progress_and_a_link_per_cell(tmp_path: Path) -> None:
    study = probe_study(
        tmp_path / "markers", [{"name": "ok"}, {"name": "bad", "overrides": {"fail": "valueerror"}}]
    )
    state, result = run(study, tmp_path / "runs")
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    by_type: dict[str, list[Any]] = {}
    for artifact in found:
        by_type.setdefault(artifact.type, []).append(artifact)
    sweep_key = f"sweep-{result['sweep_id']}"
    (table,) = by_type["table"]
    assert table.key == f"{sweep_key}-results" and "bad-s0" in str(table.data)
    (progress,) = by_type["progress"]
    assert progress.key == f"{sweep_key}-progress" and progress.data == 100.0
    summary = next(a for a in by_type["markdown"] if a.key == f"{sweep_key}-summary")
    assert "| 2 | 1 | 1 | 0 | 50.0% |" in summary.data and "| bad-s0 | ValueError | run | 1 |" in summary.data
    links = next(a for a in by_type["markdown"] if a.key == f"{sweep_key}-runs")
    for cell, row in rows_by_cell(result["results"]).items():
        assert (
            f"| {cell} | " in links.data
            and f"[{row['run_dir']}]({Path(row['run_dir']).as_uri()})" in links.data
        )
    assert "| bad-s0 | error: ValueError |" in links.data


def test_the_cli_runs_a_study_prints_the_results_path_and_summarizes_it(tmp_path: Path) -> None:
    study = tmp_path / "probe.yaml"
    study.write_text(
        f"name: clistudy\nexperiment: sweep_probe:Probe\nbase: {{markers: {tmp_path}/m}}\nseeds: [0, 1]\n"
    )
    runs = tmp_path / "runs"
    ran = CliRunner().invoke(app, ["sweep", "--study", str(study), "--runs-dir", str(runs)])
    assert ran.exit_code == 0, ran.output
    results = Path(ran.stdout.strip().splitlines()[-1])
    assert results.name == "results.csv" and results.parent.parent == (runs / "sweeps").resolve()
    status = CliRunner().invoke(app, ["sweep", "status", "clistudy", "--runs-dir", str(runs)])
    assert status.exit_code == 0, status.output
    assert "| 2 | 2 | 0 | 0 | 100.0% |" in status.stdout
    bad = CliRunner().invoke(app, ["sweep", "--study", str(tmp_path / "missing.yaml")])
    assert bad.exit_code == 2 and "cannot read study file" in bad.output


def test_a_flow_run_is_named_after_its_studys_name_or_file(tmp_path: Path) -> None:
    from llc.sweeps.flow import study_name

    named, unnamed = tmp_path / "study.yaml", tmp_path / "digits-over-training.yaml"
    named.write_text("name: digits\nbase: {chains: 2}\n")
    unnamed.write_text("base: {chains: 2}\n")
    assert study_name(named) == "digits" and study_name(str(unnamed)) == "digits-over-training"
    assert study_name({"name": "calibrate-sgld"}) == "calibrate-sgld" and study_name({}) == "inline"
