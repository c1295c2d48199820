"""W&B tracking of computed cells: offline runs hold config, metrics and the LLC trace; failures warn."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import arviz as az
import numpy as np
import pytest
from sweep_probe import probe_study, rows_by_cell

from llc.sweeps.flow import sweep

pytestmark = pytest.mark.usefixtures("prefect_server")

TINY = {"n_data": 200, "erm_steps": 30, "chains": 2, "steps": 50, "warmup": 10, "batch_size": 50}
BLOCK = 32 * 1024  # the .wandb file is a LevelDB-style log of 32 KiB blocks of protobuf records


def read_wandb_file(path: Path) -> dict[str, Any]:
    """The run, config, summary and history records of an offline run's .wandb file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": []}
    pos, chunks = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # a block's tail too short for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunks += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind not in (1, 4):  # FIRST or MIDDLE part of a record: keep reading
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(chunks)
        chunks = b""
        which = record.WhichOneof("record_type")
        if which == "run":
            out["run"] = record.run
            out["config"].update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif which == "summary":
            items = record.summary.update
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
        elif which == "history":
            items = record.history.item
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items})
    return out


def test_offline_mode_writes_a_run_per_computed_cell_with_config_metrics_and_the_llc_trace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WANDB_DIR", raising=False)
    runs = tmp_path / "runs"
    study = {
        "name": "tracked", "preset": "quick", "base": TINY,
        "problems": [{"name": "rrr", "overrides": {"widths": [3, 2, 3], "true_rank": 1}}],
        "samplers": [{"name": "sgld"}, {"name": "sghmc"}],
        "execution": {"max_parallel": 2, "wandb_mode": "offline"},
    }  # fmt: skip
    state = sweep(study=study, runs_dir=str(runs), return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    rows = rows_by_cell(result["results"])
    files = sorted((runs / "wandb").glob("offline-run-*/run-*.wandb"))
    logged = {(r := read_wandb_file(f))["run"].display_name: r for f in files}
    assert sorted(logged) == ["rrr-sghmc-s0", "rrr-sgld-s0"]
    for cell, run in logged.items():
        row = rows[cell]
        assert (run["run"].run_group, run["run"].job_type, run["run"].project) == (
            result["sweep_id"], row["sampler"], "llc",
        )  # fmt: skip
        assert run["config"]["run_id"] == row["run_id"] and run["config"]["steps"] == 50
        metrics = json.loads((Path(row["run_dir"]) / "metrics.json").read_text())
        assert run["summary"]["llc_mean"] == pytest.approx(metrics["llc_mean"])
        assert run["summary"]["ess_bulk"] == pytest.approx(metrics["ess_bulk"])
        llc = az.from_netcdf(Path(row["run_dir"]) / f"{row['sampler']}.nc").posterior["llc"].values
        trace = [h["llc"] for h in run["history"] if "llc" in h]
        assert trace == pytest.approx(list(np.mean(llc, axis=0)))
        assert len(trace) == llc.shape[1] > 1

    again = sweep(study=study, runs_dir=str(runs))
    assert again["cached"] == 2
    assert len(list((runs / "wandb").glob("offline-run-*"))) == 2  # cached cells are not logged again


def test_a_wandb_failure_is_a_warning_in_the_results_and_never_fails_the_cell(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Online with no key anywhere: wandb refuses to start, without touching the network.
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    study = probe_study(tmp_path / "markers", [{"name": "tracked"}], wandb_mode="online")
    result = sweep(study=study, runs_dir=str(tmp_path / "runs"))
    (row,) = rows_by_cell(result["results"]).values()
    assert row["status"] == "ok" and result["failed"] == 0
    assert row["wandb_warning"].startswith("W&B tracking failed: UsageError")


def test_disabled_tracking_never_imports_wandb(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from sweep_probe import PROBE\n"
        "from llc.cells.cell import Cell; from llc.cells.execute import run_cell\n"
        f"cell = Cell(name='c', experiment=PROBE, config={{}}, run_id='r1', sweep_id='s')\n"
        f"record = run_cell(cell, Path({str(tmp_path)!r}))\n"
        "print(record.status, 'wandb' in sys.modules)\n"
    )
    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", code], cwd=tests, capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["ok", "False"], done.stderr
