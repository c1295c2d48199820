"""The worked examples end to end, shortened: train and write checkpoints, sweep the study over them."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from llc.sweeps.flow import sweep
from llc.sweeps.results import read_results
from llc.sweeps.summary import training_curves

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.usefixtures("prefect_server")


# The checkpoints start at --first, log-spaced from there. The transformer's training loss stays above
# 0.01 until step 297, so the checkpoint due at 250 waits until then (the one due at 292 with it).
@pytest.mark.parametrize(
    ("example", "steps", "first", "saved"),
    [("digits", 60, 6, [6, 13, 28, 60]), ("modular_addition", 400, 250, [297, 342, 400])],
)
def test_an_example_trains_and_its_study_gives_a_curve_over_its_checkpoints(
    example: str, steps: int, first: int, saved: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = EXAMPLES / example
    trained = subprocess.run(
        [sys.executable, folder / "train.py", "--steps", str(steps), "--first", str(first),
         "--checkpoints", "4", "--out", tmp_path / "checkpoints"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    written = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert written == saved

    # The example's own study, beside the checkpoints, with shorter chains.
    study = yaml.safe_load((folder / "study.yaml").read_text())
    study["base"].update(chains=2, steps=60)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.syspath_prepend(str(folder))  # the factories' module, as PYTHONPATH does in the README
    result = sweep(study=str(tmp_path / "study.yaml"), runs_dir=str(tmp_path / "runs"))
    rows = read_results(Path(result["results"]))
    assert result["failed"] == 0, [r["error"] for r in rows]
    samplers = [entry["name"] for entry in study["samplers"]]
    assert {(r["sampler"], r["step"]) for r in rows} == {(s, step) for s in samplers for step in written}
    curves = training_curves(rows)
    assert [(c.series, c.steps) for c in curves] == [(f"{s}-s0", written) for s in sorted(samplers)]
    assert all(math.isfinite(v) for c in curves for v in c.llc_mean)
    loss = curves[0].loss
    assert loss[-1] < loss[0]  # L0: training lowered the loss between the first and the last checkpoint
    out = Path(result["results"]).parent
    assert (out / "plots" / "llc_over_training.png").read_bytes().startswith(b"\x89PNG")

    # Training went on: one more checkpoint, and one torn while it was written. Only their cells run.
    last = tmp_path / "checkpoints" / f"step_{steps}.pt"
    moved = {name: value * 0.99 for name, value in torch.load(last, weights_only=True).items()}
    torch.save(moved, tmp_path / "checkpoints" / f"step_{2 * steps}.pt")
    (tmp_path / "checkpoints" / f"step_{3 * steps}.pt").write_bytes(last.read_bytes()[:1000])
    again = sweep(study=str(tmp_path / "study.yaml"), runs_dir=str(tmp_path / "runs"))
    assert again["sweep_id"] == result["sweep_id"]
    total = len(samplers) * (len(written) + 2)
    assert (again["total"], again["cached"], again["failed"]) == (total, len(rows), len(samplers))
    torn = [r for r in read_results(Path(again["results"])) if r["step"] == 3 * steps]
    assert {(r["status"], r["error_type"]) for r in torn} == {("error", "ConfigError")}
    assert "cannot be loaded into the model" in Path(again["errors"]).read_text()


@pytest.mark.parametrize("example", ["digits", "modular_addition"])
def test_a_first_checkpoint_past_the_training_is_refused_before_any_is_written(
    example: str, tmp_path: Path
) -> None:
    trained = subprocess.run(
        [sys.executable, EXAMPLES / example / "train.py", "--steps", "50", "--first", "60",
         "--out", tmp_path / "checkpoints"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trained.returncode == 2
    assert "--first (60) must lie between 0 and --steps (50)" in trained.stderr.splitlines()[-1]
    assert not (tmp_path / "checkpoints").exists()


def test_the_attention_heads_example_gives_each_head_a_row_at_each_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = EXAMPLES / "attention_heads"
    trained = subprocess.run(
        [sys.executable, folder / "train.py", "--steps", "40", "--first", "0", "--checkpoints", "2",
         "--out", tmp_path / "checkpoints"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    written = sorted(int(p.stem.removeprefix("step_")) for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert written == [0, 40]  # the first and the last are always kept

    # The example's own study (restrict: heads), beside the checkpoints, with short chains.
    study = yaml.safe_load((folder / "study.yaml").read_text())
    study["base"].update(chains=2, warmup=0, steps=8, batch_size=8)
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    monkeypatch.syspath_prepend(str(folder))
    result = sweep(study=str(tmp_path / "study.yaml"), runs_dir=str(tmp_path / "runs"))
    rows = read_results(Path(result["results"]))
    assert (result["total"], result["failed"]) == (2, 0), [r["error"] for r in rows]
    heads = [f"layers.{layer}.head{h}" for layer in (0, 1) for h in range(4)]
    assert [(r["step"], r["restrict"]) for r in rows] == [(step, head) for step in written for head in heads]
    # A head: its 8 rows of q, k and v (32 inputs each) and its 8 columns of out_proj (32 outputs).
    assert {r["n_params"] for r in rows} == {4 * 8 * 32}
    assert all(math.isfinite(r["llc_mean"]) for r in rows)
    assert len({r["run_dir"] for r in rows}) == 2  # all heads of a checkpoint in one run
    curves = training_curves(rows)
    assert [(c.part, c.steps) for c in curves] == [(head, written) for head in heads]
    plots = Path(result["results"]).parent / "plots"
    for name in ("llc_parts_over_training.png", "llc_parts_by_step.png"):
        assert (plots / name).read_bytes().startswith(b"\x89PNG")
