"""Trust shown wherever a sweep's results are read: summary.md, `llc sweep status`, the artifacts' links,
every LLC figure (hollow markers for untrusted runs, a zero line, readable axes), and a run's own plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from typer.testing import CliRunner

from llc.cli import app
from llc.run.diagnostics import to_inference_data
from llc.run.health import FIXES, assess
from llc.run.plots import draw_plots
from llc.sweeps.artifacts import run_links
from llc.sweeps.plots import UNTRUSTED_LABEL, draw_llc_plots, llc_by_sampler, llc_by_step, llc_over_training
from llc.sweeps.results import read_results, write_results
from llc.sweeps.summary import summarize, to_markdown, training_curves


def row(cell: str, sampler: str, llc: float, flags: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "sweep_id": "s", "cell": cell, "problem": "net", "sampler": sampler, "seed": 0, "run_id": cell,
        "status": "ok", "cached": False, "trusted": flags is None, "flags": flags, "llc_mean": llc,
        "llc_se": 0.1, "duration_s": 1.0, "attempts": 1, "stage": "done", "error_type": None, "run_dir": "",
        **extra,
    }  # fmt: skip


ROWS = [
    row("net-sgld-s0", "sgld", 5.0),
    row("net-sgld-s1", "sgld", 5.5, "chains_disagree"),
    row("net-hmc-s0", "hmc", -0.4, "negative_llc;chains_disagree"),
    row("net-hmc-s1", "hmc", 4.8),
    row("net-mclmc-s0", "mclmc", 9.0, "mala_acceptance_low"),
]


def checkpoint_rows() -> list[dict[str, Any]]:
    """Two samplers over four checkpoints; sghmc reads a hundred times sgld, and is flagged early on."""
    rows = []
    for step in (0, 10, 100, 1000):
        early = "negative_llc" if step < 100 else None
        rows.append(row(f"net-sgld-s0-step={step}", "sgld", -1.0 if early else 0.5, early, step=step, L0=1.0))
        rows.append(row(f"net-sghmc-s0-step={step}", "sghmc", 80.0 + step / 100, None, step=step, L0=1.0))
    return rows


def hollow(ax: Axes) -> list[float]:
    """The y values drawn with hollow markers (untrusted) on ax."""
    return [y for line in ax.get_lines() if line.get_markerfacecolor() == "none" for y in line.get_ydata()]


def filled(ax: Axes) -> list[float]:
    return [
        y
        for line in ax.get_lines()
        if line.get_marker() == "o" and line.get_markerfacecolor() != "none"
        for y in line.get_ydata()
    ]


def has_zero_line(ax: Axes) -> bool:
    return any(list(line.get_ydata()) == [0, 0] for line in ax.get_lines())


def legend_texts(where: Axes | Figure) -> list[str]:
    """The entries of an axes' legend, or of every legend of a figure and its axes."""
    if isinstance(where, Axes):
        legends = [where.get_legend()]
    else:
        legends = [*where.legends, *(ax.get_legend() for ax in where.axes)]
    return [text.get_text() for legend in legends if legend for text in legend.get_texts()]


def test_the_summary_counts_trusted_and_untrusted_cells_and_the_most_common_flags() -> None:
    markdown = to_markdown("s", summarize(ROWS, "max:llc_mean"), "results.csv")
    assert "## Trust" in markdown and "**2 of 5 cells trusted, 3 untrusted**" in markdown
    table = markdown[markdown.index("| flag | cells |") :].splitlines()
    assert table[2].startswith("| `chains_disagree` | 2 | R-hat > 1.1")  # the most common first
    assert {line.split(" | ")[0] for line in table[3:5]} == {"| `negative_llc`", "| `mala_acceptance_low`"}
    # The per-sampler table says how many of each sampler's cells can be trusted ...
    assert "| net | hmc | 2 | 1/2 |" in markdown and "| net | mclmc | 1 | 0/1 |" in markdown
    # ... and its mean LLC, like the best cell, is of the trusted cells only: the flagged 9.0 of mclmc and
    # -0.4 of hmc are not results.
    assert "| net | hmc | 2 | 1/2 | 4.8 |" in markdown and "| net | mclmc | 1 | 0/1 | - |" in markdown
    assert "Best cell by max:llc_mean among the trusted: **net-sgld-s0** (llc_mean = 5)" in markdown


def test_a_sweep_with_no_trusted_cell_names_no_best_cell_and_no_mean() -> None:
    flagged = [{**r, "trusted": False, "flags": r["flags"] or "chains_disagree"} for r in ROWS]
    markdown = to_markdown("s", summarize(flagged, "max:llc_mean"), "results.csv")
    assert "Best cell by max:llc_mean: none, as no cell's estimate is trusted." in markdown
    assert "**net-" not in markdown
    assert "| net | sgld | 2 | 0/2 | - |" in markdown


def test_a_summary_of_cells_that_report_no_trust_has_no_trust_section() -> None:
    unchecked = [{**r, "trusted": None, "flags": None} for r in ROWS]
    assert "## Trust" not in to_markdown("s", summarize(unchecked, "max:llc_mean"), "results.csv")


def test_every_flag_the_checks_raise_has_its_fix_in_the_tables() -> None:
    raised = {
        flag.name
        for metrics, sampler in [
            ({"chains_used": 0}, "sgld"),
            (
                {
                    "chains_used": 1,
                    "chains_diverged": 3,
                    "r_hat": 2.0,
                    "mala_acceptance_mean": 0.5,
                    "minibatch_heating": 1.0,
                    "llc_mean": 2.0,
                    "erm_gap_llc": 1.0,
                },
                "sgld",
            ),
            ({"chains_used": 4, "acceptance_rate_mean": 0.1, "llc_mean": -1.0}, "hmc"),
            ({"chains_used": 4, "energy_change_var_per_dim": 1.0}, "mclmc"),
            ({"chains_used": 4, "llc_mean": 2.0, "llc_se": 1.0, "llc_rise": 0.5, "llc_rise_z": 9.0}, "hmc"),
            ({"chains_used": 4, "spread_gamma": 1e-4, "spread_growth": 4.0}, "hmc"),
            ({"chains_used": 4, "llc_mean": 100.0, "llc_se": 1.0, "d": 10}, "hmc"),
        ]
        for flag in assess(metrics, 4, sampler)
    }
    assert raised == set(FIXES)


def test_sweep_status_prints_the_trusted_counts_and_flags_from_results_csv(tmp_path: Path) -> None:
    out = tmp_path / "runs" / "sweeps" / "net-1234"
    write_results(out, ROWS, [], [])
    status = CliRunner().invoke(app, ["sweep", "status", "net", "--runs-dir", str(tmp_path / "runs")])
    assert status.exit_code == 0, status.output
    assert "**2 of 5 cells trusted, 3 untrusted**" in status.stdout
    assert "| `chains_disagree` | 2 |" in status.stdout


def test_the_artifacts_link_table_marks_untrusted_cells_with_their_flags() -> None:
    links = run_links(ROWS)
    assert "| net-hmc-s0 | ok, untrusted: negative_llc, chains_disagree |" in links
    assert "| net-sgld-s0 | ok |" in links


def test_llc_by_sampler_draws_untrusted_cells_hollow_with_a_key_and_a_zero_line() -> None:
    figure = llc_by_sampler(ROWS)
    (ax,) = figure.axes
    assert sorted(hollow(ax)) == [-0.4, 5.5, 9.0] and sorted(filled(ax)) == [4.8, 5.0]
    assert UNTRUSTED_LABEL in legend_texts(figure)
    assert has_zero_line(ax)  # an estimate is negative
    positive = [r for r in ROWS if r["llc_mean"] > 0]
    assert not has_zero_line(llc_by_sampler(positive).axes[0])


def test_llc_by_sampler_of_trusted_cells_has_no_hollow_marker_nor_key() -> None:
    trusted = [{**r, "trusted": True, "flags": None} for r in ROWS]
    figure = llc_by_sampler(trusted)
    assert hollow(figure.axes[0]) == [] and UNTRUSTED_LABEL not in legend_texts(figure)


def test_a_sampler_reading_decades_above_the_others_gets_a_log_axis() -> None:
    wild = [row("a", "sgld", 2.0), row("b", "hmc", 3.0), row("c", "sghmc", 900.0, "minibatch_noise_heats")]
    assert llc_by_sampler(wild).axes[0].get_yscale() == "log"
    assert llc_by_sampler(wild[:2]).axes[0].get_yscale() == "linear"
    signed = [*wild, row("d", "mclmc", -1.5, "negative_llc")]
    assert llc_by_sampler(signed).axes[0].get_yscale() == "symlog"


def test_over_training_has_a_panel_per_sampler_hollow_untrusted_checkpoints_and_zero() -> None:
    curves = training_curves(checkpoint_rows())
    figure = llc_over_training(curves)
    panels = {ax.get_title(): ax for ax in figure.axes if ax.get_title()}
    assert set(panels) == {"net · sgld", "net · sghmc"}  # each its own y-axis: 80 does not flatten 0.5
    sgld, sghmc = panels["net · sgld"], panels["net · sghmc"]
    assert hollow(sgld) == [-1.0, -1.0] and filled(sgld) == [0.5, 0.5]
    assert hollow(sghmc) == [] and UNTRUSTED_LABEL not in legend_texts(sghmc)
    assert UNTRUSTED_LABEL in legend_texts(sgld) and has_zero_line(sgld) and not has_zero_line(sghmc)
    assert sgld.get_ylim()[1] < 5 and sghmc.get_ylim()[0] > 50


def test_checkpoint_sweeps_draw_every_sampler_at_each_step_instead_of_a_mean_over_steps(
    tmp_path: Path,
) -> None:
    paths = draw_llc_plots(checkpoint_rows(), tmp_path)
    assert [p.name for p in paths] == ["llc_over_training.png", "llc_by_step.png"]
    figure = llc_by_step(training_curves(checkpoint_rows()))
    (ax,) = figure.axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "10", "100", "1000"]
    assert sorted(hollow(ax)) == [-1.0, -1.0] and ax.get_yscale() == "symlog"  # 80 against 0.5, signed
    assert {"sgld", "sghmc", UNTRUSTED_LABEL} <= set(legend_texts(figure)) and has_zero_line(ax)
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in paths)


def test_untrusted_marks_survive_results_csv(tmp_path: Path) -> None:
    write_results(tmp_path, checkpoint_rows(), [], [])
    curves = training_curves(read_results(tmp_path / "results.csv"))
    assert [c.trusted for c in curves] == [[True] * 4, [False, False, True, True]]
    markdown = to_markdown("s", summarize(read_results(tmp_path / "results.csv"), "max:llc_mean"), "r")
    assert "| 0 | 1 | 80 ± 0.1 | -1 ± 0.1 † |" in markdown and "† untrusted" in markdown


def test_a_flagged_runs_plots_say_untrusted_in_their_title_and_zero_is_drawn_when_negative(
    tmp_path: Path, monkeypatch: Any
) -> None:
    drawn: dict[str, Figure] = {}
    save = Figure.savefig

    def spy(self: Figure, path: Path, *args: Any, **kwargs: Any) -> None:
        drawn[Path(path).name] = self
        save(self, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", spy)
    rng = np.random.default_rng(0)

    def run(mean: float) -> Any:
        llc = rng.normal(mean, 0.5, size=(2, 200))
        return to_inference_data(llc, rng.normal(size=(2, 200)), rng.normal(size=(2, 200, 3)))

    draw_plots(run(-2.0), tmp_path / "flagged", flags=["chains_disagree", "negative_llc"])
    titles = [figure.get_suptitle() for figure in drawn.values()]
    assert titles and all(t.startswith("UNTRUSTED (chains_disagree, negative_llc)") for t in titles)
    assert has_zero_line(drawn["llc_running.png"].axes[0])
    drawn.clear()
    draw_plots(run(3.0), tmp_path / "healthy")
    assert drawn and not any("UNTRUSTED" in figure.get_suptitle() for figure in drawn.values())
    assert not has_zero_line(drawn["llc_running.png"].axes[0])
