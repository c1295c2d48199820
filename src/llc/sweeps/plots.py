"""Figures of a whole sweep from its results table: LLC by problem and sampler, LLC over training and by
checkpoint (a sweep over checkpoints), the same per part of a restricted run, and cell durations.

Every LLC figure marks an estimate whose run failed a check (results.csv `trusted`, `flags`) with a hollow
marker, draws zero when an estimate reaches it, and gives each sampler an axis it can be read on.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from itertools import groupby
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from llc.sweeps.summary import Curve, training_curves

UNTRUSTED_LABEL = "hollow: untrusted (see flags)"
# Values spanning this factor share one axis on a log scale (symlog when some are not positive).
DECADES = 100.0


def draw_sweep_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the PNGs into out_dir and return their paths: the LLC figures, then the cell durations."""
    return [*draw_llc_plots(rows, out_dir), _durations(rows, out_dir / "durations.png")]


def draw_llc_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """The LLC by sampler of cells without a checkpoint; over training and by checkpoint of those with (of
    each part, for a restricted run's parts: a curve per part and a parts × checkpoints map)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    single = [r for r in rows if r["status"] == "ok" and _number(r.get("llc_mean")) and r.get("step") is None]
    if single:
        figures.append(("llc_by_sampler.png", llc_by_sampler(single)))
    curves = training_curves(rows)
    if whole := [c for c in curves if not c.part]:
        figures += [
            ("llc_over_training.png", llc_over_training(whole)),
            ("llc_by_step.png", llc_by_step(whole)),
        ]
    if parts := [c for c in curves if c.part]:
        figures += [
            ("llc_parts_over_training.png", llc_parts_over_training(parts)),
            ("llc_parts_by_step.png", llc_parts_by_step(parts)),
        ]
    for name, figure in figures:
        figure.savefig(out_dir / name, dpi=110)
    return [out_dir / name for name, _ in figures]


def llc_over_training(curves: list[Curve]) -> Figure:
    """λ̂ ± se against step, a line per series, and L0 (dashed, right axis); a panel per problem (columns)
    and sampler (rows), so that each sampler's curve has an axis of its own."""
    problems = sorted({c.problem for c in curves})
    samplers = sorted({c.sampler for c in curves})
    colors = _colors(sorted({c.series for c in curves}))
    fig = Figure(figsize=(9.5 * len(problems), 0.6 + 3.4 * len(samplers)), layout="constrained")
    grid = fig.subplots(len(samplers), len(problems), squeeze=False, sharex="col")
    for col, problem in enumerate(problems):
        for row, sampler in enumerate(samplers):
            ax = grid[row][col]
            members = [c for c in curves if c.problem == problem and c.sampler == sampler]
            if not members:
                ax.set_axis_off()
                continue
            for curve in members:
                ax.plot(curve.steps, curve.llc_mean, "-", color=colors[curve.series], lw=1.2)
                _points(ax, curve.steps, curve.llc_mean, curve.llc_se, _trust(curve), colors[curve.series])
            label = " · ".join(part for part in (problem, sampler) if part)
            ax.set(title=label or "all cells", ylabel="LLC estimate ± se")
            _value_axis(ax, {c.series: c.llc_mean for c in members}, _lows(members))
            _step_scale(ax, sorted({s for c in members for s in c.steps}))
            handles = [_handle(colors[c.series], _short(c.series, problem, sampler)) for c in members]
            handles += _loss_axis(ax, members) + _trust_handles(members)
            # Beside the panel, past the L0 axis: inside, a legend hides the points of some checkpoint.
            ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.15, 1))
        grid[-1][col].set_xlabel("training step")
    fig.suptitle("LLC over training (one point per checkpoint; one panel per sampler)")
    return fig


def llc_by_step(curves: list[Curve]) -> Figure:
    """Every sampler's λ̂ ± se side by side at each checkpoint (evenly spaced), a panel per problem: where
    the samplers agree on a checkpoint, and which of them can be trusted there."""
    problems = sorted({c.problem for c in curves})
    samplers = sorted({c.sampler for c in curves})
    colors = _colors(samplers)
    fig = Figure(
        figsize=(max(7.0, 1.0 + 0.6 * _most_steps(curves)) * len(problems), 4.5), layout="constrained"
    )
    for ax, problem in zip(fig.subplots(1, len(problems), squeeze=False)[0], problems, strict=True):
        members = [c for c in curves if c.problem == problem]
        steps = sorted({s for c in members for s in c.steps})
        at = {step: i for i, step in enumerate(steps)}
        for k, curve in enumerate(members):
            shift = 0.4 * (k / (len(members) - 1) - 0.5) if len(members) > 1 else 0.0
            x = [at[s] + shift for s in curve.steps]
            _points(ax, x, curve.llc_mean, curve.llc_se, _trust(curve), colors[curve.sampler])
        by_sampler: dict[str, list[float]] = defaultdict(list)
        for curve in members:
            by_sampler[curve.sampler] += curve.llc_mean
        _value_axis(ax, by_sampler, _lows(members))
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=45 if len(steps) > 8 else 0)
        for boundary in range(len(steps) - 1):  # which checkpoint a point belongs to, at a glance
            ax.axvline(boundary + 0.5, color="0.9", lw=0.8, zorder=0)
        ax.set(title=problem or "all cells", xlabel="checkpoint (training step)", ylabel="LLC estimate ± se")
        ax.legend(handles=[_handle(colors[s], s) for s in samplers if any(c.sampler == s for c in members)],
                  fontsize="small", loc="best")  # fmt: skip
    _trust_key(fig, curves)
    fig.suptitle("LLC of each sampler at each checkpoint (one point per cell)")
    return fig


def llc_parts_over_training(curves: list[Curve]) -> Figure:
    """λ̂ ± se of each part against step, a line per part (one color per part throughout), and L0 (dashed,
    right axis); a panel per series of cells (problem, sampler, seed, grid values)."""
    panels = _part_panels(curves)
    colors = _colors(list(dict.fromkeys(c.part for c in curves)))
    fig = Figure(figsize=(10.5, 0.6 + 3.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, ((problem, cells), members) in zip(axes, panels.items(), strict=True):
        for curve in members:
            ax.plot(curve.steps, curve.llc_mean, "-", color=colors[curve.part], lw=1.2)
            _points(ax, curve.steps, curve.llc_mean, curve.llc_se, _trust(curve), colors[curve.part])
        ax.set(title=" · ".join(p for p in (problem, cells) if p), ylabel="LLC estimate ± se")
        _value_axis(ax, {c.part: c.llc_mean for c in members}, _lows(members))
        _step_scale(ax, sorted({s for c in members for s in c.steps}))
        handles = [_handle(colors[c.part], c.part) for c in members]
        handles += _loss_axis(ax, members) + _trust_handles(members)
        ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.12, 1))
    axes[-1].set_xlabel("training step")
    fig.suptitle("LLC of each part over training (one point per checkpoint; one panel per series of cells)")
    return fig


def llc_parts_by_step(curves: list[Curve]) -> Figure:
    """A parts × checkpoints map of λ̂ per series of cells, each value written in its square; an untrusted
    estimate's square is hatched and its value bracketed, a missing one left blank."""
    panels = _part_panels(curves)
    steps_of = {key: sorted({s for c in members for s in c.steps}) for key, members in panels.items()}
    most_parts = max(len(members) for members in panels.values())
    width = max(6.0, 2.5 + 0.75 * max(len(steps) for steps in steps_of.values()))
    fig = Figure(figsize=(width, 0.8 + (0.9 + 0.38 * most_parts) * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, ((problem, cells), members) in zip(axes, panels.items(), strict=True):
        steps = steps_of[(problem, cells)]
        values = [[math.nan] * len(steps) for _ in members]
        for i, curve in enumerate(members):
            for step, mean in zip(curve.steps, curve.llc_mean, strict=True):
                values[i][steps.index(step)] = mean
        image = ax.imshow(values, aspect="auto", cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, label="LLC estimate", pad=0.01)
        known = [v for row in values for v in row if math.isfinite(v)]
        middle = (min(known) + max(known)) / 2 if known else 0.0
        for i, curve in enumerate(members):
            for step, mean, trusted in zip(curve.steps, curve.llc_mean, _trust(curve), strict=True):
                j, text = steps.index(step), f"{mean:.3g}"
                box = None
                if trusted is False:  # the value stays readable on a pale box over the hatching
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="xx", ec="0.7", lw=0))
                    text, box = f"({text})", {"fc": "w", "ec": "none", "alpha": 0.85, "pad": 1}
                ax.text(j, i, text, ha="center", va="center", fontsize="x-small", bbox=box,
                        color="k" if box or mean > middle else "w")  # fmt: skip
        ax.set_xticks(range(len(steps)), [str(s) for s in steps], rotation=45 if len(steps) > 8 else 0)
        ax.set_yticks(range(len(members)), [c.part for c in members])
        ax.set(title=" · ".join(p for p in (problem, cells) if p), xlabel="checkpoint (training step)")
    if any(t is False for c in curves for t in _trust(c)):
        fig.legend(handles=[Rectangle((0, 0), 1, 1, fc="w", ec="0.4", hatch="xx",
                                      label="hatched, (value): untrusted (see flags)")],
                   loc="outside lower center", fontsize="small")  # fmt: skip
    fig.suptitle("LLC of each part at each checkpoint")
    return fig


def _part_panels(curves: list[Curve]) -> dict[tuple[str, str], list[Curve]]:
    """The parts' curves by series of cells (problem, then the cells' name less the part), in order."""
    ordered = sorted(curves, key=lambda c: (c.problem, c.cells))
    return {key: list(group) for key, group in groupby(ordered, key=lambda c: (c.problem, c.cells))}


def llc_by_sampler(rows: list[dict[str, Any]]) -> Figure:
    """One panel per problem: each cell's LLC ± standard error per sampler, the true LLC dashed."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_problem[str(row["problem"] or "")].append(row)
    colors = _colors(sorted({str(r["sampler"]) for r in rows}))
    fig = Figure(figsize=(max(7.0, 4.5 * len(by_problem)), 4.5), layout="constrained")
    axes = fig.subplots(1, len(by_problem), squeeze=False)[0]
    for ax, (problem, members) in zip(axes, sorted(by_problem.items()), strict=True):
        samplers = sorted({str(r["sampler"]) for r in members})
        for i, sampler in enumerate(samplers):
            cells = [r for r in members if str(r["sampler"]) == sampler]
            offsets = [
                i + 0.3 * (k / max(len(cells) - 1, 1) - 0.5) * (len(cells) > 1) for k in range(len(cells))
            ]
            means = [float(r["llc_mean"]) for r in cells]
            errors = [float(r["llc_se"]) if _number(r.get("llc_se")) else 0.0 for r in cells]
            _points(ax, offsets, means, errors, [r.get("trusted") for r in cells], colors[sampler])
        handles = []
        truth = next((r["llc_true"] for r in members if _number(r.get("llc_true"))), None)
        if truth is not None:
            ax.axhline(truth, color="k", ls="--", lw=1)
            handles.append(Line2D([], [], color="k", ls="--", lw=1, label=f"true LLC = {truth:g}"))
        by_sampler = {s: [float(r["llc_mean"]) for r in members if str(r["sampler"]) == s] for s in samplers}
        lows = [
            float(r["llc_mean"]) - (float(r["llc_se"]) if _number(r.get("llc_se")) else 0.0) for r in members
        ]
        _value_axis(ax, by_sampler, lows)
        ax.set(title=problem or "all cells", ylabel="LLC estimate ± se")
        ax.set_xticks(range(len(samplers)), samplers)
        if handles:
            ax.legend(handles=handles, fontsize="small", loc="best")
    _trust_key(fig, [r.get("trusted") for r in rows])
    fig.suptitle("LLC by problem and sampler (one point per cell)")
    return fig


def _points(
    ax: Axes,
    x: Sequence[float],
    means: Sequence[float],
    errors: Sequence[float],
    trusted: Sequence[bool | None],
    color: Any,
) -> None:
    """λ̂ ± se as markers: filled where the run passed its checks (or was not checked), hollow where not."""
    for hollow in (False, True):
        kept = [i for i, t in enumerate(trusted) if (t is False) == hollow]
        if kept:
            ax.errorbar(
                [x[i] for i in kept], [means[i] for i in kept], yerr=[errors[i] for i in kept], fmt="o",
                ms=6 if hollow else 5, capsize=3, color=color, mfc="none" if hollow else color, mew=1.3,
            )  # fmt: skip


def _trust_handles(trusted: Sequence[Any]) -> list[Line2D]:
    """The legend's key to the markers, when some are hollow: curves or a row's `trusted` values."""
    flags = [t for item in trusted for t in (_trust(item) if isinstance(item, Curve) else [item])]
    if not any(t is False for t in flags):
        return []
    return [
        Line2D([], [], color="0.3", marker="o", ls="", label="filled: trusted"),
        Line2D([], [], color="0.3", marker="o", mfc="none", ls="", label=UNTRUSTED_LABEL),
    ]


def _trust_key(fig: Figure, trusted: Sequence[Any]) -> None:
    """The key to hollow markers once for the whole figure, under its panels, where it hides no point."""
    if handles := _trust_handles(trusted):
        fig.legend(handles=handles, loc="outside lower center", ncols=2, fontsize="small")


def _value_axis(ax: Axes, groups: dict[str, list[float]], lows: list[float]) -> None:
    """A zero line when an estimate less its se (`lows`) reaches zero; a log axis when one group's (a
    sampler's, a line's) typical size is decades from another's (symlog around zero when some values are
    not positive), so that a sampler far from the others leaves them readable."""
    values = [v for members in groups.values() for v in members]
    if min(lows) <= 0:
        ax.axhline(0, color="0.25", lw=0.8, zorder=0)
    typical = [statistics.median(s) for m in groups.values() if (s := [abs(v) for v in m if v != 0])]
    if len(typical) < 2 or max(typical) < DECADES * min(typical):
        return
    if min(values) > 0:
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=min(typical))
    ax.margins(y=0.1)  # in decades now: the outermost points off the frame


def _lows(curves: list[Curve]) -> list[float]:
    return [m - se for c in curves for m, se in zip(c.llc_mean, c.llc_se, strict=True)]


def _trust(curve: Curve) -> list[bool | None]:
    return curve.trusted or [None] * len(curve.steps)


def _colors(names: list[str]) -> dict[str, Any]:
    return {name: f"C{i % 10}" for i, name in enumerate(names)}


def _handle(color: Any, label: str) -> Line2D:
    return Line2D([], [], color=color, marker="o", label=label)


def _short(series: str, problem: str, sampler: str) -> str:
    """A series' name less what its panel's title says: `net-sgld-s0-gamma=10` → `s0-gamma=10`."""
    return series.removeprefix(f"{problem}-").removeprefix(f"{sampler}-") or series


def _most_steps(curves: list[Curve]) -> int:
    by_problem: dict[str, set[int]] = defaultdict(set)
    for curve in curves:
        by_problem[curve.problem].update(curve.steps)
    return max(len(steps) for steps in by_problem.values())


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _step_scale(ax: Axes, steps: list[int]) -> None:
    """Log steps when they span two decades or more (symlog when step 0 is among them)."""
    positive = [s for s in steps if s > 0]
    if len(positive) < 2 or max(positive) < 100 * min(positive):
        return
    if steps[0] == 0:
        ax.set_xscale("symlog", linthresh=min(positive))
    else:
        ax.set_xscale("log")


def _loss_axis(ax: Axes, curves: list[Curve]) -> list[Line2D]:
    """L0 at each checkpoint, dashed on a second axis: one line per panel, since every cell of a checkpoint
    on the same data reports the same L0 (where a grid changes the data, the mean at each step). Returns
    the line for the legend (none without L0)."""
    at_step: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, loss in zip(curve.steps, curve.loss, strict=True):
            if loss is not None:
                at_step[step].append(loss)
    if not at_step:
        return []
    steps = sorted(at_step)
    losses = [sum(at_step[s]) / len(at_step[s]) for s in steps]
    twin = ax.twinx()
    ax.set_zorder(twin.get_zorder() + 1)  # the estimates drawn over the loss, on a see-through panel
    ax.patch.set_visible(False)
    (line,) = twin.plot(steps, losses, ls="--", color="0.45", marker=".", label="L0 (training loss)")
    if min(losses) > 0 and max(losses) >= 100 * min(losses):
        twin.set_yscale("log")
    twin.set_ylabel("L0 (training loss at the checkpoint)", color="0.35")
    return [line]


def _durations(rows: list[dict[str, Any]], path: Path) -> Path:
    """Histogram of cell durations, stacked by outcome: computed, cached, failed (a restricted cell once)."""
    rows = list({r["cell"]: r for r in rows}.values())
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
