"""The Modal backend's client side against the in-process stand-in (tests/modal_standin.py): spawn and
poll, the start watchdog, timeouts and cancellation, the preflight, refusals that stop a sweep, the
schema handshake, and run directories fetched from the volume. Modal's servers are not needed."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import modal.exception as modal_errors
import pytest
from modal_standin import StandInModal
from sweep_probe import PROBE, ProbeConfig, executions

from llc.backends import BackendUnavailable, get_backend, run_on
from llc.backends.base import JobState
from llc.backends.modal import client as modal_backend
from llc.backends.modal.client import ModalBackend
from llc.cells.cell import Cell
from llc.cells.experiments import run_id
from llc.rundir import RunDir
from llc.settings import ModalOptions
from llc.sweeps import interrupt

pytestmark = pytest.mark.timeout(60)

FAST = {"poll_s": 0.05, "preflight_timeout_s": 5.0}


def probe_cell(name: str = "probe", **config: Any) -> Cell:
    probe = ProbeConfig(**config)
    return Cell(name=name, experiment=PROBE, config=probe.model_dump(), run_id=run_id(PROBE, probe))


@pytest.fixture
def standin(tmp_path: Path) -> StandInModal:
    return StandInModal(tmp_path)


def open_backend(standin: StandInModal, max_parallel: int = 1, **options: Any) -> ModalBackend:
    return ModalBackend(max_parallel, client=standin, **{**FAST, **options})


def test_a_cell_runs_on_the_cpu_function_and_its_sealed_run_dir_arrives_locally(
    standin: StandInModal, tmp_path: Path
) -> None:
    cell = probe_cell(x=1.5)
    runs = tmp_path / "runs"
    with open_backend(standin) as backend:
        record = run_on(backend, cell, runs, skip=True, timeout_s=30)
    assert record.status == "ok", record
    assert record.metrics["value"] == 3.0
    assert record.run_dir == str(runs / cell.run_id)
    assert RunDir(runs, cell.run_id).is_complete()
    assert (runs / cell.run_id / "output.txt").read_text().startswith("x=1.5")
    assert RunDir(standin.volume_root, cell.run_id).is_complete()  # it stays on the volume
    assert (standin.functions["run_cell_cpu"].spawns, standin.functions["run_cell_gpu"].spawns) == (1, 0)
    stages = [value["stage"] for _, value in standin.board.history]
    assert stages[0] == "start" and "run" in stages and "upload" in stages
    assert standin.board.data == {}  # the client removed its progress entry


def test_a_cached_result_on_the_volume_is_fetched_without_computing_again(
    standin: StandInModal, tmp_path: Path
) -> None:
    cell = probe_cell(x=2.0, markers=str(tmp_path / "markers"))
    with open_backend(standin) as backend:
        first = run_on(backend, cell, tmp_path / "a", skip=True, timeout_s=30)
        second = run_on(backend, cell, tmp_path / "b", skip=True, timeout_s=30)
    assert (first.cached, second.cached) == (False, True)
    assert RunDir(tmp_path / "b", cell.run_id).is_complete()
    assert len(list((tmp_path / "markers").iterdir())) == 1  # computed once


def test_preflight_without_a_token_is_unavailable_and_submits_nothing(standin: StandInModal) -> None:
    standin.functions["ping"].spawn_errors[1] = modal_errors.AuthError("Token missing.")
    with pytest.raises(BackendUnavailable, match=r"modal token new.*MODAL_TOKEN_ID"):
        open_backend(standin)
    assert standin.cell_spawns() == 0


def test_preflight_names_the_deploy_command_when_the_app_is_not_deployed(standin: StandInModal) -> None:
    del standin.functions["ping"]
    with pytest.raises(BackendUnavailable, match=r"not deployed.*deployments/modal/deploy\.sh"):
        open_backend(standin)


def test_preflight_fails_fast_when_the_deployed_app_has_another_schema(
    standin: StandInModal, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = {**modal_backend.handshake(), "schema": "0123abcd0123"}
    standin.functions["ping"].body = lambda: {**worker, "gpu_types": ["T4"], "tier": "debug"}
    with pytest.raises(BackendUnavailable, match=r"runs llc=\S+ schema=0123abcd0123 .*redeploy"):
        open_backend(standin)


def test_preflight_that_gets_no_answer_is_unavailable(standin: StandInModal) -> None:
    standin.functions["ping"].start_delay_s = None
    started = time.monotonic()
    with pytest.raises(BackendUnavailable, match=r"did not answer a ping within 0\.3 s"):
        open_backend(standin, preflight_timeout_s=0.3)
    assert time.monotonic() - started < 3


def test_a_worker_with_another_schema_refuses_the_cell_without_running_it(
    standin: StandInModal, tmp_path: Path
) -> None:
    cell = probe_cell(markers=str(tmp_path / "markers"))
    with open_backend(standin, preflight=False) as backend:
        backend.handshake = {**backend.handshake, "schema": "fedcba987654"}
        record = run_on(backend, cell, tmp_path / "runs", skip=True, timeout_s=30)
    assert (record.status, record.error_type, record.retryable) == ("error", "ModalVersionMismatch", False)
    assert "schema=fedcba987654" in record.error and "redeploy" in record.error
    assert not (tmp_path / "markers").exists() and not (standin.volume_root / cell.run_id).exists()


def test_the_watchdog_cancels_a_call_that_never_starts(standin: StandInModal, tmp_path: Path) -> None:
    standin.functions["run_cell_cpu"].start_delay_s = None
    started = time.monotonic()
    with open_backend(standin, client_hang_timeout_s=0.5) as backend:
        record = run_on(backend, probe_cell(), tmp_path / "runs", skip=True, timeout_s=30)
    assert (record.error_type, record.stage, record.retryable) == ("ModalNotStarted", "queued", True)
    assert "did not start within 0.5 s" in record.error
    assert time.monotonic() - started < 3
    call = standin.functions["run_cell_cpu"].calls[0]
    assert call.cancelled.is_set() and call.terminate_containers is True


def test_the_watchdog_never_cuts_a_long_healthy_run(standin: StandInModal, tmp_path: Path) -> None:
    standin.functions["run_cell_cpu"].start_delay_s = 0.2
    started = time.monotonic()
    with open_backend(standin, client_hang_timeout_s=0.5) as backend:
        record = run_on(backend, probe_cell(sleep_s=2.0), tmp_path / "runs", skip=True, timeout_s=30)
    assert record.status == "ok", record
    assert time.monotonic() - started > 2.0  # ran four times longer than the watchdog's limit
    assert not standin.functions["run_cell_cpu"].calls[0].cancelled.is_set()


def test_the_cell_timeout_cancels_a_running_call(standin: StandInModal, tmp_path: Path) -> None:
    started = time.monotonic()
    with open_backend(standin) as backend:
        record = run_on(backend, probe_cell(sleep_s=20.0), tmp_path / "runs", skip=True, timeout_s=0.5)
    assert (record.error_type, record.retryable) == ("Timeout", False)
    assert time.monotonic() - started < 5
    assert standin.functions["run_cell_cpu"].calls[0].cancelled.is_set()


def test_modal_function_timeout_is_a_timeout_record(standin: StandInModal, tmp_path: Path) -> None:
    standin.functions["run_cell_cpu"].get_error = modal_errors.FunctionTimeoutError("timed out")
    with open_backend(standin) as backend:
        record = run_on(backend, probe_cell(), tmp_path / "runs", skip=True, timeout_s=30)
    assert (record.error_type, record.retryable) == ("Timeout", False)
    assert "LLC_MODAL_TIMEOUT_S" in record.error


@pytest.mark.parametrize(
    ("error", "error_type", "guidance"),
    [
        (modal_errors.AuthError("Token missing."), "ModalAuthError", "modal token new"),
        (modal_errors.ResourceExhaustedError("billing limit reached"), "ModalOutOfFunds", "spending limit"),
    ],
)
@pytest.mark.parametrize("where", ["spawn", "get"])
def test_auth_and_funding_errors_are_not_retried_and_stop_further_submissions(
    standin: StandInModal, tmp_path: Path, error: Exception, error_type: str, guidance: str, where: str
) -> None:
    function = standin.functions["run_cell_cpu"]
    if where == "spawn":
        function.spawn_errors[1] = error
    else:
        function.get_error = error
    with open_backend(standin, max_parallel=2) as backend:
        first = run_on(backend, probe_cell("first", x=1.0), tmp_path / "runs", skip=True, timeout_s=30)
        second = run_on(backend, probe_cell("second", x=2.0), tmp_path / "runs", skip=True, timeout_s=30)
    assert (first.error_type, first.retryable) == (error_type, False)
    assert guidance in first.error
    assert (second.error_type, second.retryable, second.stage) == (error_type, False, "submit")
    assert second.error.startswith("not submitted:") and guidance in second.error
    assert function.spawns == 1


def test_cancel_stops_the_call_and_frees_its_place(standin: StandInModal, tmp_path: Path) -> None:
    with open_backend(standin) as backend:
        job = backend.submit(probe_cell(sleep_s=20.0), tmp_path / "runs", True, None)
        assert job.wait(timeout=0.5) is None
        assert job.state is JobState.RUNNING and job.stage == "run"
        job.cancel()
        assert job.state is JobState.CANCELLED
        assert standin.functions["run_cell_cpu"].calls[0].terminate_containers is True
        other = run_on(backend, probe_cell("other", x=3.0), tmp_path / "runs", skip=True, timeout_s=30)
    assert other.status == "ok"  # max_parallel=1: the cancelled call no longer holds the only place


def test_a_cancelled_flow_run_cancels_the_calls(standin: StandInModal, tmp_path: Path) -> None:
    """SIGTERM (Prefect cancelling a flow run) cancels every call, as the sweep flow wires it."""
    records: list[Any] = []
    interrupt.reset()
    try:
        with (
            interrupt.on_signals(),
            open_backend(standin, max_parallel=2) as backend,
            interrupt.cancels(backend.cancel_all),
        ):
            cells = [probe_cell("a", sleep_s=20.0), probe_cell("b", sleep_s=20.0, x=1.0)]
            waiters = [
                threading.Thread(target=lambda c=c: records.append(run_on(backend, c, tmp_path, True, None)))
                for c in cells
            ]
            for waiter in waiters:
                waiter.start()
            while len(standin.functions["run_cell_cpu"].calls) < 2:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGTERM)
            for waiter in waiters:
                waiter.join(5)
    finally:
        interrupt.reset()
    assert [r.error_type for r in records] == ["ModalCancelled", "ModalCancelled"]
    assert all("interrupted (SIGTERM)" in r.error for r in records)
    assert all(call.cancelled.is_set() for call in standin.functions["run_cell_cpu"].calls)


def test_options_come_from_arguments_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLC_MODAL_GPU_TYPES", "h100, B200, a10g")
    monkeypatch.setenv("LLC_MODAL_CLIENT_HANG_TIMEOUT_S", "42")
    options = ModalOptions(tier="debug")
    assert options.gpus() == ["H100", "A10G"]  # B200 is not on the allowlist: dropped with a warning
    assert (options.client_hang_timeout_s, options.tier) == (42.0, "debug")
    with pytest.raises(ValueError, match="no known GPU type"):
        ModalOptions(gpu_types="B200,MI300")
    assert ModalOptions(gpu_types=None).gpus() == ["L4", "A10G", "T4"]  # the standard tier's


def test_unknown_backend_options_name_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown Modal option\(s\) \['gpu'\].*client_hang_timeout_s"):
        get_backend("modal", 1, {"gpu": "H100"})


def test_a_restarted_sweep_reattaches_to_the_calls_of_a_killed_flow(
    standin: StandInModal, tmp_path: Path
) -> None:
    """The first backend is dropped unclosed, as a SIGKILLed flow leaves it: its calls go on. The second
    re-attaches to the call that still runs (no second call for it) and spawns the failed cell again."""
    ledger, runs, markers = tmp_path / "jobs.jsonl", tmp_path / "runs", str(tmp_path / "markers")
    cells = [
        probe_cell("runs-on", sleep_s=1.5, markers=markers),
        probe_cell("failed", fail="valueerror", fail_times=1, markers=markers),
    ]
    killed = open_backend(standin, max_parallel=2)
    killed.submit_all(cells, runs, True, 30, ledger)
    failed = killed.submit(cells[1], runs, True, 30)
    killed.submit(cells[0], runs, True, 30)
    assert failed.wait(timeout=10).status == "error"
    with open_backend(standin, max_parallel=2) as restarted:
        restarted.submit_all(cells, runs, True, 30, ledger)
        records = [run_on(restarted, cell, runs, True, 30) for cell in cells]
    assert [record.status for record in records] == ["ok", "ok"]
    assert RunDir(runs, cells[0].run_id).is_complete()
    assert standin.cell_spawns() == 3  # the cell that ran on was not spawned again
    assert sorted(executions(Path(markers)).values()) == [1, 2]
