"""`llc run --backend modal`, a sweep on Modal, `llc pull-runs` and `llc runs ls | rm`: without a token for
real, and otherwise against the in-process stand-in of Modal (tests/modal_standin.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import modal.exception as modal_errors
import pytest
from modal_standin import StandInModal
from sweep_probe import PROBE, ProbeConfig, probe_study, rows_by_cell
from typer.testing import CliRunner

from llc.backends.modal import app as modal_app
from llc.backends.modal import client as modal_backend
from llc.backends.modal.client import handshake
from llc.cells.cell import Cell
from llc.cells.experiments import run_id
from llc.cli import app
from llc.rundir import RunDir
from llc.sweeps.flow import sweep

ROOT = Path(__file__).resolve().parents[1]
LLC = ROOT / ".venv" / "bin" / "llc"
SMALL = ["--set", "steps=50", "--set", "warmup=10", "--set", "erm_steps=50", "--set", "n_data=200",
         "--set", "chains=2"]  # fmt: skip
pytestmark = pytest.mark.timeout(120)
runner = CliRunner()


@pytest.fixture
def standin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StandInModal:
    """The stand-in in place of Modal for everything that connects (the backend, `llc runs`)."""
    fake = StandInModal(tmp_path)
    monkeypatch.setattr(modal_backend, "connect", lambda options: fake)
    monkeypatch.setenv("LLC_MODAL_POLL_S", "0.05")
    return fake


def on_volume(standin: StandInModal, x: float) -> str:
    """Run a probe cell straight onto the stand-in's volume, as a finished Modal call leaves it."""
    probe = ProbeConfig(x=x)
    cell = Cell(name=f"p{x:g}", experiment=PROBE, config=probe.model_dump(), run_id=run_id(PROBE, probe))
    request = {"cell": cell.model_dump(mode="json"), "skip": True, "handshake": handshake(), "ticket": "t"}
    assert modal_app.serve_cell(request, standin.volume_root, None)["record"]["status"] == "ok"
    return cell.run_id


def test_llc_run_on_modal_without_a_token_fails_fast_and_submits_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODAL_", "LLC_"))}
    env["HOME"] = str(tmp_path)  # no ~/.modal.toml
    started = time.monotonic()
    done = subprocess.run(
        [LLC, "run", "--sampler", "sgld", "--backend", "modal", "--runs-dir", tmp_path / "runs", *SMALL],
        env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    assert "Modal preflight failed: no Modal credentials" in done.stderr
    assert "modal token new" in done.stderr and "MODAL_TOKEN_SECRET" in done.stderr
    assert "running on the modal backend" not in done.stderr  # it never got as far as submitting
    assert not (tmp_path / "runs").exists()
    assert elapsed < 20, f"took {elapsed:.1f} s"


def test_llc_run_on_modal_runs_a_real_cell_on_the_gpu_function_and_brings_its_run_dir_back(
    standin: StandInModal, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    done = runner.invoke(
        app, ["run", "--sampler", "sgld", "--backend", "modal", "--runs-dir", str(runs), *SMALL]
    )
    assert done.exit_code == 0, done.output
    local = Path(done.stdout.strip().splitlines()[-1])
    assert local.parent == runs and RunDir(runs, local.name).is_complete()
    assert RunDir(standin.volume_root, local.name).is_complete()
    assert (standin.functions["run_cell_gpu"].spawns, standin.functions["run_cell_cpu"].spawns) == (1, 0)


def test_llc_run_on_modal_with_an_undeployed_app_names_the_deploy_command(standin: StandInModal) -> None:
    del standin.functions["ping"]
    done = runner.invoke(app, ["run", "--sampler", "sgld", "--backend", "modal", *SMALL])
    assert done.exit_code == 2
    assert "deployments/modal/deploy.sh" in done.output
    assert standin.cell_spawns() == 0


@pytest.mark.usefixtures("prefect_server")
def test_a_sweep_stops_submitting_when_modal_runs_out_of_funds(standin: StandInModal, tmp_path: Path) -> None:
    standin.functions["run_cell_cpu"].spawn_errors[2] = modal_errors.ResourceExhaustedError("limit reached")
    study = probe_study(tmp_path / "markers", [{"name": "a"}, {"name": "b"}, {"name": "c"}], max_parallel=1)
    runs = tmp_path / "runs"
    state = sweep(study=study, backend="modal", runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    rows = rows_by_cell(state.result()["results"])
    outcome = sorted((r["status"], r["error_type"], r["attempts"]) for r in rows.values())
    assert outcome == [("error", "ModalOutOfFunds", 1), ("error", "ModalOutOfFunds", 1), ("ok", None, 1)]
    assert standin.functions["run_cell_cpu"].spawns == 2  # the third cell was never submitted
    ok = next(r for r in rows.values() if r["status"] == "ok")
    assert RunDir(runs, ok["run_id"]).is_complete()  # arrived as the cell completed
    errors = (Path(state.result()["errors"])).read_text()
    assert "not submitted" in errors and "spending limit" in errors


def test_pull_runs_fetches_named_runs_and_the_latest(standin: StandInModal, tmp_path: Path) -> None:
    old, new = on_volume(standin, 1.0), on_volume(standin, 2.0)
    standin.age(old, 3600)
    runs = tmp_path / "runs"
    named = runner.invoke(app, ["pull-runs", old, "--runs-dir", str(runs)])
    assert named.exit_code == 0, named.output
    assert named.stdout.split() == [str(runs / old)] and RunDir(runs, old).is_complete()
    assert not (runs / new).exists()
    latest = runner.invoke(app, ["pull-runs", "--latest", "--runs-dir", str(runs)])
    assert latest.exit_code == 0 and latest.stdout.split() == [str(runs / new)]
    assert RunDir(runs, new).is_complete()
    assert standin.volumes["llc-runs"].removed == []  # pulling never deletes anything on the volume


def test_pull_runs_replaces_a_broken_local_copy_and_refuses_unknown_or_unsealed_runs(
    standin: StandInModal, tmp_path: Path
) -> None:
    sealed = on_volume(standin, 1.0)
    runs = tmp_path / "runs"
    (runs / sealed).mkdir(parents=True)
    (runs / sealed / "metrics.json").write_text("{}")  # an unsealed leftover
    assert runner.invoke(app, ["pull-runs", sealed, "--runs-dir", str(runs)]).exit_code == 0
    assert RunDir(runs, sealed).is_complete()
    (standin.volume_root / "partial").mkdir()
    (standin.volume_root / "partial" / "config.json").write_text("{}")
    unsealed = runner.invoke(app, ["pull-runs", "partial", "--runs-dir", str(runs)])
    assert unsealed.exit_code == 2 and "not sealed" in unsealed.output and not (runs / "partial").exists()
    unknown = runner.invoke(app, ["pull-runs", "nope", "--runs-dir", str(runs)])
    assert unknown.exit_code == 2 and "not on the volume: nope" in unknown.output
    assert runner.invoke(app, ["pull-runs"]).exit_code == 2  # neither RUN_IDs nor --latest


def test_runs_ls_lists_the_volume_and_rm_deletes_only_what_is_named(standin: StandInModal) -> None:
    keep, drop = on_volume(standin, 1.0), on_volume(standin, 2.0)
    (standin.volume_root / "families").mkdir()
    (standin.volume_root / "partial").mkdir()
    (standin.volume_root / "partial" / "config.json").write_text("{}")
    listed = runner.invoke(app, ["runs", "ls", "--modal"])
    assert listed.exit_code == 0, listed.output
    states = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert states == {keep: "sealed", drop: "sealed", "partial": "partial"}
    dry = runner.invoke(app, ["runs", "rm", drop, "--dry-run"])
    assert dry.exit_code == 0 and f"would delete {drop}/complete.json" in dry.stdout
    assert (standin.volume_root / drop).exists() and standin.volumes["llc-runs"].removed == []
    removed = runner.invoke(app, ["runs", "rm", drop])
    assert removed.exit_code == 0 and f"deleted {drop}/output.txt" in removed.stdout
    assert not (standin.volume_root / drop).exists() and RunDir(standin.volume_root, keep).is_complete()
    assert standin.volumes["llc-runs"].removed == [drop]
    missing = runner.invoke(app, ["runs", "rm", keep, "nope"])
    assert missing.exit_code == 2 and RunDir(standin.volume_root, keep).is_complete()  # all or nothing


def test_runs_commands_without_a_token_say_how_to_get_one(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    for key in [k for k in os.environ if k.startswith("MODAL_")]:
        monkeypatch.delenv(key)
    done = runner.invoke(app, ["runs", "ls", "--modal"])
    assert done.exit_code == 2 and "modal token new" in done.output
