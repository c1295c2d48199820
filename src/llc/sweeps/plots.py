"""Figures of a whole sweep from its results table: LLC by problem and sampler, LLC over training (a
sweep over checkpoints), and cell durations."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from llc.sweeps.summary import Curve, training_curves


def draw_sweep_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the PNGs into out_dir and return their paths: the LLC figures, then the cell durations."""
    return [*draw_llc_plots(rows, out_dir), _durations(rows, out_dir / "durations.png")]


def draw_llc_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The LLC by sampler when a cell has an estimate, and over training when cells have steps."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    estimated = [r for r in rows if r["status"] == "ok" and isinstance(r.get("llc_mean"), int | float)]
    if estimated:
        written.append(_llc_by_sampler(estimated, out_dir / "llc_by_sampler.png"))
    if curves := training_curves(rows):
        figure = llc_over_training(curves)
        figure.savefig(out_dir / "llc_over_training.png", dpi=110)
        written.append(out_dir / "llc_over_training.png")
    return written


def llc_over_training(curves: list[Curve]) -> Figure:
    """λ̂ ± se against step, a line per series, and L0 (dashed, right axis); one panel per problem."""
    by_problem: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        by_problem[curve.problem].append(curve)
    fig = Figure(figsize=(7 * len(by_problem), 4.5), layout="constrained")
    axes = fig.subplots(1, len(by_problem), squeeze=False)[0]
    for ax, (problem, members) in zip(axes, sorted(by_problem.items()), strict=True):
        for curve in members:
            label = curve.series.removeprefix(f"{problem}-")
            ax.errorbar(
                curve.steps, curve.llc_mean, yerr=curve.llc_se, fmt="o-", ms=4, capsize=3, label=label
            )
        ax.set(title=problem or "all cells", xlabel="training step", ylabel="LLC estimate ± se")
        _step_scale(ax, sorted({s for c in members for s in c.steps}))
        _loss_axis(ax, members)
        ax.legend(fontsize="small", loc="upper left")
    fig.suptitle("LLC over training (one point per checkpoint)")
    return fig


def _step_scale(ax: Axes, steps: list[int]) -> None:
    """Log steps when they span two decades or more (symlog when step 0 is among them)."""
    positive = [s for s in steps if s > 0]
    if len(positive) < 2 or max(positive) < 100 * min(positive):
        return
    if steps[0] == 0:
        ax.set_xscale("symlog", linthresh=min(positive))
    else:
        ax.set_xscale("log")


def _loss_axis(ax: Axes, curves: list[Curve]) -> None:
    """L0 at each checkpoint, dashed on a second axis: one line per panel, since every cell of a checkpoint
    on the same data reports the same L0 (where a grid changes the data, the mean at each step)."""
    at_step: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, loss in zip(curve.steps, curve.loss, strict=True):
            if loss is not None:
                at_step[step].append(loss)
    if not at_step:
        return
    steps = sorted(at_step)
    losses = [sum(at_step[s]) / len(at_step[s]) for s in steps]
    twin = ax.twinx()
    ax.set_zorder(twin.get_zorder() + 1)  # the estimates drawn over the loss, on a see-through panel
    ax.patch.set_visible(False)
    twin.plot(steps, losses, ls="--", color="0.45", marker=".", label="L0 (training loss)")
    if min(losses) > 0 and max(losses) >= 100 * min(losses):
        twin.set_yscale("log")
    twin.set_ylabel("L0 (training loss at the checkpoint)", color="0.35")
    twin.legend(fontsize="small", loc="upper right")


def _llc_by_sampler(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per problem: each cell's LLC ± standard error per sampler, the true LLC dashed."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_problem[str(row["problem"] or "")].append(row)
    fig = Figure(figsize=(4 * len(by_problem), 4), layout="constrained")
    axes = fig.subplots(1, len(by_problem), squeeze=False)[0]
    for ax, (problem, members) in zip(axes, sorted(by_problem.items()), strict=True):
        samplers = sorted({str(r["sampler"]) for r in members})
        for i, sampler in enumerate(samplers):
            cells = [r for r in members if str(r["sampler"]) == sampler]
            offsets = [
                i + 0.3 * (k / max(len(cells) - 1, 1) - 0.5) * (len(cells) > 1) for k in range(len(cells))
            ]
            ax.errorbar(
                offsets,
                [r["llc_mean"] for r in cells],
                yerr=[r.get("llc_se") or 0 for r in cells],
                fmt="o",
                capsize=3,
            )
        truth = next((r["llc_true"] for r in members if isinstance(r.get("llc_true"), int | float)), None)
        if truth is not None:
            ax.axhline(truth, color="k", ls="--", lw=1, label=f"true LLC = {truth:g}")
            ax.legend(fontsize="small")
        ax.set(
            title=problem or "all cells",
            xticks=range(len(samplers)),
            xticklabels=samplers,
            ylabel="LLC estimate ± se",
        )
    fig.suptitle("LLC by problem and sampler (one point per cell)")
    fig.savefig(path, dpi=110)
    return path


def _durations(rows: list[dict[str, Any]], path: Path) -> Path:
    """Histogram of cell durations, stacked by outcome: computed, cached, failed."""
    groups = {
        "computed": [r for r in rows if r["status"] == "ok" and not r["cached"]],
        "cached": [r for r in rows if r["status"] == "ok" and r["cached"]],
        "failed": [r for r in rows if r["status"] != "ok"],
    }
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    kept = {
        name: [float(r["duration_s"] or 0) for r in members] for name, members in groups.items() if members
    }
    ax.hist(list(kept.values()), bins=30, stacked=True, label=list(kept))
    ax.set(xlabel="cell duration (s)", ylabel="cells", title=f"Cell durations ({len(rows)} cells)")
    ax.legend()
    fig.savefig(path, dpi=110)
    return path
