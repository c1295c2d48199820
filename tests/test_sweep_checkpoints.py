"""Checkpoints in studies: `weights` as a glob or a list gives one cell per checkpoint, with its step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from sweep_probe import PROBE, executions, rows_by_cell

from llc.sweeps.figures import llc_figures
from llc.sweeps.flow import sweep
from llc.sweeps.plan import plan_sweep
from llc.sweeps.plots import draw_llc_plots, llc_over_training
from llc.sweeps.results import read_results
from llc.sweeps.study import StudyError
from llc.sweeps.summary import Curve, training_curves


def write_checkpoint(folder: Path, step: int, llc: float | None, name: str = "step_{step}.txt") -> Path:
    """A probe checkpoint: the numbers its cell reports (or garbage that cannot be loaded)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name.format(step=step)
    path.write_text("\x00\x17garbage" if llc is None else f"llc={llc} L0={1.0 / (1 + step)}\n")
    return path


def study_file(folder: Path, weights: Any, markers: Path, **extra: Any) -> Path:
    study = {
        "name": "ckpt",
        "experiment": PROBE,
        "base": {"markers": str(markers), "weights": weights},
        "samplers": [{"name": "a", "overrides": {"x": 1}}, {"name": "b", "overrides": {"x": 2}}],
        "execution": {"max_parallel": 2, "retries": 0, "timeout_s": 60},
        **extra,
    }
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_a_glob_gives_one_cell_per_checkpoint_named_by_its_step(tmp_path: Path) -> None:
    for step in (1000, 10, 100):
        write_checkpoint(tmp_path / "ckpts", step, llc=1.0)
    plan = plan_sweep(study_file(tmp_path, "ckpts/step_*.txt", tmp_path / "m"))
    names = [cell.name for cell in plan.cells]
    assert names == [f"{s}-s0-step={n}" for s in ("a", "b") for n in (10, 100, 1000)]
    first = plan.cells[0]
    assert (first.checkpoint, first.step) == ("ckpts/step_10.txt", 10)  # the path as the glob matched it
    # The config gets the absolute file, read from the study's folder whatever the working directory.
    assert first.config["weights"] == str(tmp_path / "ckpts" / "step_10.txt")
    assert len({cell.run_id for cell in plan.cells}) == 6


def test_a_list_with_steps_beside_it_sets_each_checkpoint_s_step(tmp_path: Path) -> None:
    files = [write_checkpoint(tmp_path, 0, 1.0, name=n) for n in ("early.txt", "late.txt")]
    weights = {"files": [str(files[1]), "early.txt"], "steps": [500, 5]}
    plan = plan_sweep(study_file(tmp_path, weights, tmp_path / "m", samplers=[{"name": "a"}]))
    assert [(c.name, c.checkpoint, c.step) for c in plan.cells] == [
        ("a-s0-step=5", "early.txt", 5),
        ("a-s0-step=500", str(files[1]), 500),
    ]


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ("none_*.txt", "no checkpoint matches 'none_*.txt'"),
        (["step_1.txt", "step_7.txt"], "no such checkpoint file 'step_7.txt'"),
        ("*.txt", "no integer in the file name 'final.txt'"),
        ({"files": "step_*.txt", "steps": [1]}, "steps must list one integer per file: 2 files"),
        ({"files": ["step_1.txt", "final.txt"], "steps": [3, 3]}, "two checkpoints have the same step 3"),
        ({"files": "step_*.txt", "step": [1, 2]}, "a checkpoint set has keys files and steps, not ['step']"),
    ],
)
def test_a_bad_checkpoint_set_is_reported_at_its_line(tmp_path: Path, weights: Any, message: str) -> None:
    write_checkpoint(tmp_path, 1, 1.0)
    write_checkpoint(tmp_path, 2, 1.0)
    write_checkpoint(tmp_path, 0, 1.0, name="final.txt")
    path = study_file(tmp_path, weights, tmp_path / "m")
    with pytest.raises(StudyError) as caught:
        plan_sweep(path)
    assert f"{path}:5: weights: {message}" in str(caught.value)


@pytest.mark.usefixtures("prefect_server")
def test_new_checkpoints_compute_only_their_cells_and_a_corrupt_one_is_its_error_row(tmp_path: Path) -> None:
    folder, markers, runs = tmp_path / "ckpts", tmp_path / "markers", tmp_path / "runs"
    for step, llc in ((10, 1.5), (100, 3.0)):
        write_checkpoint(folder, step, llc)
    study = study_file(tmp_path, "ckpts/step_*.txt", markers)
    first = sweep(study=str(study), runs_dir=str(runs))
    rows = rows_by_cell(first["results"])
    assert (first["total"], first["ok"]) == (4, 4)
    assert {(r["checkpoint"], r["step"], r["llc_mean"]) for r in rows.values()} == {
        ("ckpts/step_10.txt", 10, 1.5),
        ("ckpts/step_100.txt", 100, 3.0),
    }
    header = Path(first["results"]).read_text().splitlines()[0].split(",")
    assert header[:7] == ["sweep_id", "cell", "problem", "sampler", "seed", "checkpoint", "step"]

    # Training went on: one more checkpoint, and one that cannot be loaded.
    write_checkpoint(folder, 1000, 4.0)
    write_checkpoint(folder, 5000, None)
    before = sum(executions(markers).values())
    second = sweep(study=str(study), runs_dir=str(runs))
    assert second["sweep_id"] == first["sweep_id"]  # the same study: its table grows
    assert sum(executions(markers).values()) - before == 4  # 2 new checkpoints x 2 samplers
    assert (second["total"], second["ok"], second["failed"], second["cached"]) == (8, 6, 2, 4)
    rows = rows_by_cell(second["results"])
    assert rows["a-s0-step=1000"]["status"] == "ok" and rows["a-s0-step=1000"]["llc_mean"] == 4.0
    broken = rows["a-s0-step=5000"]
    assert (broken["status"], broken["error_type"], broken["step"]) == ("error", "ValueError", 5000)
    errors = (Path(second["errors"])).read_text()
    assert "cannot load checkpoint" in errors and "b-s0-step=5000" in errors

    # The figure over training: drawn by the flow, one point per loaded checkpoint on each sampler's line.
    out = Path(second["results"]).parent
    curves = training_curves(read_results(Path(second["results"])))
    assert [(c.series, c.steps, c.llc_mean) for c in curves] == [
        (f"{s}-s0", [10, 100, 1000], [1.5, 3.0, 4.0]) for s in ("a", "b")
    ]
    assert curves[0].loss == [1 / 11, 1 / 101, 1 / 1001]
    assert (out / "plots" / "llc_over_training.png").read_bytes().startswith(b"\x89PNG")
    summary = (out / "summary.md").read_text()
    assert "![LLC over training](plots/llc_over_training.png)" in summary
    # ... and as a table: a row per step, a column per line (the corrupt checkpoint's cells have no value).
    assert "| step | L0 | a-s0 | b-s0 |" in summary and "| 1000 | 0.000999 | 4 ± 0.2 | 4 ± 0.2 |" in summary


def test_the_figure_over_training_plots_each_checkpoint_of_each_line_with_l0_beside(tmp_path: Path) -> None:
    def row(cell: str, sampler: str, step: int, llc: float, status: str = "ok") -> dict[str, Any]:
        return {"cell": f"{cell}-step={step}", "problem": "net", "sampler": sampler, "step": step,
                "status": status, "llc_mean": llc, "llc_se": 0.1, "L0": 2.0 / (1 + step)}  # fmt: skip

    rows = [row("net-sgld-s0-gamma=10", "sgld", s, 1 + s / 1000) for s in (0, 10, 100, 1000)]
    rows += [row("net-sgld-s0-gamma=100", "sgld", s, 2 + s / 1000) for s in (0, 10, 100, 1000)]
    rows += [row("net-hmc-s0-gamma=10", "hmc", s, 3.0) for s in (0, 1000)]
    rows += [row("net-hmc-s0-gamma=10", "hmc", 10, 9.0, status="error")]
    curves = training_curves(rows)
    assert [(c.series, len(c.steps)) for c in curves] == [
        ("net-hmc-s0-gamma=10", 2), ("net-sgld-s0-gamma=10", 4), ("net-sgld-s0-gamma=100", 4),
    ]  # fmt: skip
    figure = llc_over_training(curves)
    # A panel per sampler (hmc's, then sgld's), then each panel's L0 axis.
    hmc, sgld, _, loss_axis = figure.axes
    assert (hmc.get_title(), sgld.get_title()) == ("net · hmc", "net · sgld")
    lines = {line.get_label(): line for line in sgld.get_lines() if line.get_linestyle() == "-"}
    assert len(lines) == 2  # one line per series of the panel: the two gammas
    ydata = sorted(list(line.get_ydata()) for line in lines.values())
    assert ydata == [[1.0, 1.01, 1.1, 2.0], [2.0, 2.01, 2.1, 3.0]]
    assert all(list(line.get_xdata()) == [0, 10, 100, 1000] for line in lines.values())
    legend = [text.get_text() for text in sgld.get_legend().get_texts()]
    assert legend == ["s0-gamma=10", "s0-gamma=100", "L0 (training loss)"]
    assert sgld.get_xscale() == "symlog"  # steps span decades and start at 0
    # One L0 line (all series share the checkpoints' loss), on its own axis, log as it spans decades.
    (loss,) = loss_axis.get_lines()
    assert list(loss.get_ydata()) == [2.0, 2 / 11, 2 / 101, 2 / 1001] and loss_axis.get_yscale() == "log"
    paths = draw_llc_plots(rows, tmp_path)
    assert [p.name for p in paths] == ["llc_over_training.png", "llc_by_step.png"]


def test_steps_within_two_decades_keep_a_linear_axis() -> None:
    curve = Curve("p", "p-sgld", [100, 200, 400], [1.0, 2.0, 3.0], [0.1] * 3, [None] * 3)
    figure = llc_over_training([curve])
    assert [ax.get_xscale() for ax in figure.axes] == ["linear"]  # and no L0 axis without L0


def test_a_rerun_with_the_same_rows_keeps_the_figures_and_new_values_redraw_them(tmp_path: Path) -> None:
    rows = [{"cell": f"p-sgld-s{s}", "problem": "p", "sampler": "sgld", "status": "ok", "llc_mean": 1.0 + s,
             "llc_se": 0.1, "cached": False, "duration_s": 1.0} for s in (0, 1)]  # fmt: skip
    figures = llc_figures(rows, tmp_path)
    drawn = figures["LLC by problem and sampler"]
    first = drawn.stat().st_mtime_ns
    rerun = [{**row, "cached": True, "duration_s": 0.0} for row in rows]  # what a cached re-run changes
    assert llc_figures(rerun, tmp_path) == figures and drawn.stat().st_mtime_ns == first
    changed = [{**rows[0], "llc_mean": 5.0}, rows[1]]
    assert llc_figures(changed, tmp_path) == figures and drawn.stat().st_mtime_ns != first
    drawn.unlink()  # a deleted figure is drawn again
    assert llc_figures(changed, tmp_path) == figures and drawn.exists()
