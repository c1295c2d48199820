"""The Modal app's definition, read from Modal's own objects (FunctionInfo, the image's layers), and the
cell function's real body run through `.local()` on real cells."""

from __future__ import annotations

import importlib
import logging
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import modal
import pytest
from modal._utils.async_utils import synchronizer
from sweep_probe import PROBE, ProbeConfig

from llc.backends.modal import app as modal_app
from llc.backends.modal.client import handshake
from llc.cells.cell import Cell, lone_cell
from llc.cells.experiments import run_id
from llc.config import build_config
from llc.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def define_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Define the app again (as `modal deploy` does) under LLC_MODAL_* settings; the default one after."""

    def define(**env: str) -> ModuleType:
        for key in [k for k in os.environ if k.startswith("LLC_MODAL_")]:
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(f"LLC_MODAL_{key.upper()}", value)
        return importlib.reload(modal_app)

    yield define
    monkeypatch.undo()
    importlib.reload(modal_app)


def image_layers(image: modal.Image) -> list[str]:
    """The Dockerfile commands Modal would build the image from (walking its layers' definitions)."""
    raw = synchronizer._translate_in(image)
    scope = dict(
        zip(raw._load.__code__.co_freevars, (c.cell_contents for c in raw._load.__closure__), strict=True)
    )
    commands: list[str] = []
    for base in [*(scope.get("base_images") or {}).values(), scope.get("base_image")]:
        if base is not None:
            commands += image_layers(base)
    if scope.get("dockerfile_function"):
        commands += scope["dockerfile_function"]("2025.06").commands
    return commands


def test_the_app_takes_gpus_resources_timeout_retries_volumes_and_secrets_from_settings(
    define_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        app = define_app(gpu_types="h100,B200,A10G", tier="fast", timeout_s="7200", retries="3",
                         wandb_secret="wandb", s3_secret="aws", app_name="llc-test")  # fmt: skip
    assert "unknown Modal GPU type 'B200' dropped" in caplog.text
    assert app.app.name == "llc-test"
    gpu = app.run_cell_gpu.info()
    assert gpu.gpus == [("H100", 1), ("A10G", 1)]  # in priority order: Modal falls back down the list
    assert (gpu.cpu, gpu.memory_mib, gpu.timeout, gpu.max_retries) == (8.0, 32768, 7200, 3)
    assert {path: mount.name for path, mount in gpu.volumes.items()} == {
        "/runs": "llc-runs",
        "/cache": "llc-cache",
    }
    assert gpu.secrets == ["modal.Secret.from_name('wandb')", "modal.Secret.from_name('aws')"]
    cpu = app.run_cell_cpu.info()
    assert cpu.gpus == [] and (cpu.cpu, cpu.timeout, cpu.volumes.keys()) == (8.0, 7200, gpu.volumes.keys())
    ping = app.ping.info()
    assert ping.gpus == [] and ping.volumes == {} and ping.timeout == 60


def test_the_default_app_is_llc_experiments_on_the_standard_tier(define_app: Any) -> None:
    app = define_app()
    info = app.run_cell_gpu.info()
    assert app.app.name == "llc-experiments"
    assert info.gpus == [("L4", 1), ("A10G", 1), ("T4", 1)]
    assert (info.cpu, info.memory_mib, info.timeout, info.max_retries, info.secrets) == (
        4.0,
        16384,
        3600,
        1,
        [],
    )


def test_no_known_gpu_type_left_is_an_error(define_app: Any) -> None:
    with pytest.raises(ValueError, match="no known GPU type"):
        define_app(gpu_types="B200")


def test_the_image_installs_the_projects_dependencies_settings_and_code(define_app: Any) -> None:
    app = define_app(gpu_types="A100", tier="h100")
    layers = image_layers(app.image)
    install = next(layer for layer in layers if "uv pip install" in layer)
    for requirement in (
        "torch>=2.4",
        "prefect<3.9,>=3.8",
        "pydantic-settings>=2.3",
        "wandb==0.31.0",
        "boto3",
    ):
        assert requirement in install
    assert "pytest" not in install and "submitit" not in install  # test and SLURM extras stay out
    assert any("apt-get install" in layer and "g++" in layer for layer in layers)  # for compile=true
    env = [layer.removeprefix("ENV ") for layer in layers if layer.startswith("ENV")]
    for setting in (
        "LLC_MODAL_GPU_TYPES=A100",
        "LLC_MODAL_TIER=h100",
        "LLC_RUNS_DIR=/runs",
        "LLC_VERSION=0.1.0",
    ):
        assert setting in env
    assert synchronizer._translate_in(app.image)._added_python_source_set == frozenset({"llc"})


def test_the_deploy_script_turns_flags_into_settings(tmp_path: Path) -> None:
    fake = tmp_path / "python"  # stands for the interpreter: shows what `modal deploy` would get
    fake.write_text('#!/bin/sh\nenv | grep ^LLC_MODAL_ | sort\necho "args: $*"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLC_MODAL_")}
    flags = ["--gpu-types", "H100,A100", "--tier", "fast", "--retries", "2"]
    done = subprocess.run(
        [ROOT / "deployments/modal/deploy.sh", *flags],
        env={**env, "PYTHON": str(fake)}, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "LLC_MODAL_GPU_TYPES=H100,A100\nLLC_MODAL_RETRIES=2\nLLC_MODAL_TIER=fast" in done.stdout
    assert "args: -m modal deploy -m llc.backends.modal.app" in done.stdout


# -- the function's body, through .local() -----------------------------------------------------------


def request(cell: Cell, **extra: Any) -> dict[str, Any]:
    return {
        "cell": cell.model_dump(mode="json"),
        "skip": True,
        "handshake": handshake(),
        "ticket": "t1",
        **extra,
    }


def test_the_cell_function_runs_a_real_llc_cell_onto_the_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = tmp_path / "volume"
    monkeypatch.setattr(modal_app, "RUNS_MOUNT", volume)  # .local() mounts no volume: this folder is it
    config = build_config("quick", {"sampler": "sgld", "steps": 50, "warmup": 10, "erm_steps": 50,
                                    "n_data": 200, "chains": 2, "gpu_mode": "off"})  # fmt: skip
    cell = lone_cell(config)
    reply = modal_app.run_cell_gpu.local(request(cell))
    record = reply["record"]
    assert (record["status"], record["run_dir"], record["cached"]) == ("ok", cell.run_id, False), record
    assert reply["worker"] == handshake()
    assert RunDir(volume, cell.run_id).is_complete()
    assert (volume / cell.run_id / "sgld.nc").stat().st_size > 0
    assert (volume / "families" / cell.family_id / "erm.pt").exists()
    assert not (volume / ".locks").exists()  # locks stay in the container's scratch folder
    again = modal_app.run_cell_cpu.local(request(cell))["record"]
    assert (again["status"], again["cached"]) == ("ok", True)


def test_the_cell_function_refuses_a_client_with_another_schema(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(modal_app, "RUNS_MOUNT", tmp_path)
    probe = ProbeConfig(markers=str(tmp_path / "markers"))
    cell = Cell(name="p", experiment=PROBE, config=probe.model_dump(), run_id=run_id(PROBE, probe))
    client = {**handshake(), "schema": "000000000000"}
    record = modal_app.run_cell_cpu.local(request(cell, handshake=client))["record"]
    assert (record["error_type"], record["retryable"], record["stage"]) == (
        "ModalVersionMismatch",
        False,
        "handshake",
    )
    assert f"schema={handshake()['schema']}" in record["error"] and "this client" in record["error"]
    assert not (tmp_path / "markers").exists() and not (tmp_path / cell.run_id).exists()
