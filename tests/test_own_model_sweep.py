"""`problem: module` cells in studies: on the local backend and the test suite's SLURM cluster, cached
and resumed like any cell. The factories are tests/own_model_factories.py, which the backends import
from the flow's own import path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from slurm_fixtures import slurm_backend_registered, slurm_cluster

from llc.config import build_config
from llc.run.experiment import run_llc
from llc.rundir import RunDir
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep
from llc.sweeps.results import read_results

__all__ = ["slurm_backend_registered", "slurm_cluster"]

MODULE = {
    "problem": "module",
    "model": "own_model_factories:classifier",
    "data": "own_model_factories:classification_data",
    "loss": "cross_entropy",
}
TIMING = {
    "duration_s",
    "t_sampling_s",
    "t_erm_s",
    "t_warmup_s",
    "draws_per_second",
    "ess_per_second",
    "run_dir",
}


def module_study(weights: Path) -> dict[str, Any]:
    """Two problems (the factory's weights, and a weights file) × sgld and hmc."""
    return {
        "name": "own-model",
        "base": {**MODULE, "chains": 2, "steps": 40, "warmup": 10, "batch_size": 32},
        "problems": [
            {"name": "module"},
            {"name": "module-trained", "overrides": {"problem": "module", "weights": str(weights)}},
        ],
        "samplers": [{"name": "sgld"}, {"name": "hmc", "overrides": {"n_leapfrog": 3}}],
        "execution": {"max_parallel": 2},
    }


def trained_weights(path: Path) -> Path:
    from own_model_factories import classification_data, classifier

    model = classifier()
    x, y = classification_data().tensors
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    torch.save(model.state_dict(), path)
    return path


def rows(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["cell"]: row for row in read_results(Path(result["results"]))}


@pytest.fixture(scope="module")
def local_sweeps(prefect_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The module study on the local backend, then again on the same runs directory."""
    root = tmp_path_factory.mktemp("own-model")
    study = module_study(trained_weights(root / "trained.pt"))
    runs = root / "runs"
    first = sweep(study=study, backend="local", runs_dir=str(runs), backend_options={"threads_per_cell": 1})
    first_rows = rows(first)  # before the second sweep rewrites the study's results table
    again = sweep(study=study, backend="local", runs_dir=str(runs), backend_options={"threads_per_cell": 1})
    return {"study": study, "runs": runs, "first": first, "rows": first_rows, "again": again}


def test_a_module_study_runs_on_the_local_backend_and_a_second_sweep_reuses_every_cell(local_sweeps):
    first, again = local_sweeps["first"], local_sweeps["again"]
    assert (first["total"], first["ok"], first["cached"]) == (4, 4, 0)
    assert (again["total"], again["ok"], again["cached"]) == (4, 4, 4)
    got = local_sweeps["rows"]
    assert all(not row["cached"] for row in got.values())
    assert all(row["cached"] for row in rows(again).values())
    assert set(got) == {"module-sgld-s0", "module-hmc-s0", "module-trained-sgld-s0", "module-trained-hmc-s0"}
    for row in got.values():
        assert np.isfinite(row["llc_mean"]) and row["status"] == "ok"
    # The weights file is a different w*: another family, and a lower loss there.
    assert got["module-sgld-s0"]["family_id"] == got["module-hmc-s0"]["family_id"]
    assert got["module-sgld-s0"]["family_id"] != got["module-trained-sgld-s0"]["family_id"]
    cells = {cell.name: cell for cell in plan_sweep(local_sweeps["study"]).cells}
    for name, cell in cells.items():
        assert RunDir(local_sweeps["runs"], cell.run_id).is_complete(), name


@pytest.mark.usefixtures("slurm_cluster", "slurm_backend_registered")
@pytest.mark.timeout(300)
def test_a_module_study_on_slurm_gives_the_local_backends_results(local_sweeps, tmp_path):
    on_slurm = sweep(
        study=local_sweeps["study"],
        backend="slurm",
        runs_dir=str(tmp_path / "slurm"),
        backend_options={"threads_per_cell": 1, "gpus": 0},
    )
    assert (on_slurm["total"], on_slurm["ok"], on_slurm["cached"]) == (4, 4, 0)
    expected, got = local_sweeps["rows"], rows(on_slurm)
    assert set(got) == set(expected)
    for cell, row in got.items():
        assert {k: v for k, v in row.items() if k not in TIMING} == {
            k: v for k, v in expected[cell].items() if k not in TIMING
        }


class _Interrupted(Exception):
    pass


def test_an_interrupted_module_run_resumes_from_its_checkpoint_to_the_uninterrupted_result(tmp_path):
    config = build_config(None, {**MODULE, "chains": 2, "steps": 150, "warmup": 50, "batch_size": 32})
    reference = run_llc(config, tmp_path / "reference").metrics

    def stop_at_100(done: int, total: int) -> None:
        if done == 100:
            raise _Interrupted

    runs = tmp_path / "runs"
    with pytest.raises(_Interrupted):
        run_llc(config, runs, progress=stop_at_100, checkpoint_every_s=0.0)
    assert RunDir(runs, config.run_id).checkpoint.exists()
    resumed = run_llc(config, runs, checkpoint_every_s=0.0)
    assert not resumed.cached
    same = {k for k in reference if k not in TIMING}
    assert {k: resumed.metrics[k] for k in same} == {k: reference[k] for k in same}


def test_a_module_cell_on_modal_gets_its_weights_file_with_the_request(tmp_path):
    """Through the in-process stand-in of Modal: the container cannot read the client's weights path
    (the file is moved away while the call runs), so the result can only come from the shipped bytes."""
    from modal_standin import StandInModal

    from llc.backends import run_on
    from llc.backends.modal.client import ModalBackend
    from llc.cells.cell import lone_cell

    weights = trained_weights(tmp_path / "trained.pt")
    run = {"chains": 2, "steps": 30, "batch_size": 32, "device": "cpu"}  # the CPU function
    config = build_config(None, {**MODULE, "weights": str(weights), **run})
    expected = run_llc(config, tmp_path / "local").metrics
    standin = StandInModal(tmp_path / "modal")
    body = standin.functions["run_cell_cpu"].body
    away = tmp_path / "away.pt"

    def in_a_container(request: dict[str, Any]) -> dict[str, Any]:
        weights.rename(away)
        try:
            return body(request)
        finally:
            away.rename(weights)

    standin.functions["run_cell_cpu"].body = in_a_container
    cell = lone_cell(config)
    with ModalBackend(1, client=standin, poll_s=0.05, preflight_timeout_s=5.0) as backend:
        record = run_on(backend, cell, tmp_path / "runs", skip=True, timeout_s=120)
    assert record.status == "ok", record
    assert standin.functions["run_cell_cpu"].spawns == 1
    assert record.run_id == config.run_id and RunDir(tmp_path / "runs", config.run_id).is_complete()
    assert {k: v for k, v in record.metrics.items() if k not in TIMING} == {
        k: v for k, v in expected.items() if k not in TIMING
    }
