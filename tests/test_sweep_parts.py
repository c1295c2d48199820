"""Studies of a model's parts: a restricted run's cell gives one row per part (results.csv `restrict`),
a curve per part over training and a parts × checkpoints map."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from parts_probe import PARTS_PROBE
from test_sweep_checkpoints import write_checkpoint

from llc.sweeps.artifacts import run_links
from llc.sweeps.flow import sweep
from llc.sweeps.plots import llc_parts_by_step, llc_parts_over_training
from llc.sweeps.results import read_results
from llc.sweeps.summary import training_curves

HEADS = ["layers.0.head0", "layers.0.head1", "layers.1.head0"]


@pytest.mark.usefixtures("prefect_server")
def test_a_restricted_study_gives_a_row_per_part_and_the_parts_figures(tmp_path: Path) -> None:
    for step, llc in ((10, 1.0), (100, 2.0), (1000, 3.0)):
        write_checkpoint(tmp_path / "ckpts", step, llc)
    study = {
        "name": "parts", "experiment": PARTS_PROBE,
        "base": {"weights": "ckpts/step_*.txt", "parts": HEADS},
        "samplers": [{"name": "sgld"}, {"name": "sghmc", "overrides": {"untrusted": "layers.0.head1"}}],
        "execution": {"max_parallel": 2, "retries": 0, "timeout_s": 60},
    }  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    result = sweep(study=str(tmp_path / "study.yaml"), runs_dir=str(tmp_path / "runs"))

    # Counts are of cells (2 samplers × 3 checkpoints); the table has a row per part of each.
    assert (result["total"], result["ok"], result["failed"]) == (6, 6, 0)
    path = Path(result["results"])
    header = path.read_text().splitlines()[0].split(",")
    assert header[:8] == ["sweep_id", "cell", "problem", "sampler", "seed", "checkpoint", "step", "restrict"]
    rows = read_results(path)
    assert [(r["cell"], r["restrict"]) for r in rows[:3]] == [("sghmc-s0-step=10", h) for h in HEADS]
    assert len(rows) == 18
    at_100 = {r["restrict"]: r for r in rows if r["cell"] == "sghmc-s0-step=100"}
    assert [at_100[h]["llc_mean"] for h in HEADS] == [2.0, 4.0, 6.0]  # each part's own estimate
    assert [at_100[h]["trusted"] for h in HEADS] == [True, False, True]
    assert at_100["layers.0.head1"]["flags"] == "chains_disagree"
    assert at_100["layers.1.head0"]["restrict_pattern"] == "layers.1.head0.*"
    assert {r["L0"] for r in at_100.values()} == {1 / 101}  # the run's shared numbers on every part's row

    # A curve per part of each series of cells, the parts in the run's order.
    curves = training_curves(rows)
    assert [(c.series, c.part, c.steps) for c in curves] == [
        (f"{s}-s0-{h}", h, [10, 100, 1000]) for s in ("sghmc", "sgld") for h in HEADS
    ]
    out = path.parent
    summary = (out / "summary.md").read_text()
    assert "**15 of 18 estimates (one per part of each cell) trusted, 3 untrusted**" in summary
    for name, title in (("llc_parts_over_training.png", "LLC of each part over training"),
                        ("llc_parts_by_step.png", "LLC of each part at each checkpoint")):  # fmt: skip
        assert (out / "plots" / name).read_bytes().startswith(b"\x89PNG")
        assert f"![{title}](plots/{name})" in summary
    assert not (out / "plots" / "llc_over_training.png").exists()  # the parts' figures replace it


def test_the_parts_figures_draw_a_line_per_part_and_hatch_untrusted_squares() -> None:
    def row(step: int, head: str, llc: float, trusted: bool = True) -> dict[str, object]:
        return {"cell": f"sgld-s0-step={step}", "problem": None, "sampler": "sgld", "step": step,
                "restrict": head, "status": "ok", "llc_mean": llc, "llc_se": 0.1, "trusted": trusted,
                "L0": 1 / (1 + step)}  # fmt: skip

    rows = [
        row(s, h, (i + 1) * s / 10, not (s == 100 and i == 2)) for s in (10, 100) for i, h in enumerate(HEADS)
    ]
    curves = training_curves(rows)
    (ax, _loss) = llc_parts_over_training(curves).axes
    lines = [line for line in ax.get_lines() if line.get_linestyle() == "-"]
    assert [list(line.get_ydata()) for line in lines] == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend[:3] == HEADS and "hollow: untrusted (see flags)" in legend

    heatmap = llc_parts_by_step(curves).axes[0]
    (image,) = heatmap.get_images()
    assert image.get_array().tolist() == [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]]  # parts × checkpoints
    assert [t.get_text() for t in heatmap.get_yticklabels()] == HEADS
    hatched = [p.get_xy() for p in heatmap.patches if p.get_hatch()]
    assert hatched == [(0.5, 1.5)]  # the square of head 3 at the second checkpoint
    assert "(30)" in [t.get_text() for t in heatmap.texts]


def test_the_run_links_list_a_restricted_cell_once_naming_its_untrusted_parts() -> None:
    rows = [
        {"cell": "sgld-s0", "status": "ok", "cached": False, "run_dir": "/runs/abc", "restrict": head,
         "trusted": head != HEADS[1], "flags": "" if head != HEADS[1] else "chains_disagree;negative_llc"}
        for head in HEADS
    ]  # fmt: skip
    links = run_links(rows).splitlines()
    status = "ok, untrusted: layers.0.head1 (chains_disagree, negative_llc)"
    assert links[2:] == [f"| sgld-s0 | {status} | [/runs/abc](file:///runs/abc) |"]  # one line per cell
