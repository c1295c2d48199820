"""Summarize a results table: counts, durations, the best cell, LLC by problem and sampler, and LLC
over training (a sweep over checkpoints)."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

MAX_LISTED_ERRORS = 20
MAX_LISTED_STEPS = 40


@dataclass(frozen=True)
class Curve:
    """One line of the figure over training: a cell's series (its name less `-step=N`) across checkpoints."""

    problem: str
    series: str
    steps: list[int]
    llc_mean: list[float]
    llc_se: list[float]
    loss: list[float | None]  # L0, the training loss at each checkpoint


@dataclass(frozen=True)
class Summary:
    total: int
    ok: int
    failed: int
    cached: int
    cancelled: int
    mean_duration_s: float
    total_duration_s: float
    best_by: str
    best: dict[str, Any] | None
    by_sampler: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    over_training: list[Curve] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0


def summarize(rows: list[dict[str, Any]], best_by: str) -> Summary:
    """best_by is `max:METRIC` or `min:METRIC`, over the cells that ended ok."""
    ok = [r for r in rows if r["status"] == "ok"]
    cancelled = sum(r["status"] == "cancelled" for r in rows)
    durations = [float(r["duration_s"] or 0) for r in rows]
    return Summary(
        total=len(rows),
        ok=len(ok),
        failed=len(rows) - len(ok) - cancelled,
        cached=sum(bool(r["cached"]) for r in rows),
        cancelled=cancelled,
        mean_duration_s=statistics.fmean(durations) if durations else 0.0,
        total_duration_s=sum(durations),
        best_by=best_by,
        best=_best(ok, best_by),
        by_sampler=_by_sampler(ok),
        errors=[r for r in rows if r["status"] == "error"],
        over_training=training_curves(rows),
    )


def training_curves(rows: list[dict[str, Any]]) -> list[Curve]:
    """A curve per series of cells over checkpoints (problem, sampler, seed, grid values), by step."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and isinstance(row.get("step"), int) and _number(row.get("llc_mean")):
            name = str(row["cell"]).removesuffix(f"-step={row['step']}")
            series[(str(row["problem"] or ""), name)].append(row)
    curves = []
    for (problem, name), members in sorted(series.items()):
        members.sort(key=lambda r: r["step"])
        curves.append(Curve(
            problem=problem, series=name, steps=[r["step"] for r in members],
            llc_mean=[float(r["llc_mean"]) for r in members],
            llc_se=[float(r["llc_se"]) if _number(r.get("llc_se")) else 0.0 for r in members],
            loss=[float(r["L0"]) if _number(r.get("L0")) else None for r in members],
        ))  # fmt: skip
    return curves


def _best(rows: list[dict[str, Any]], best_by: str) -> dict[str, Any] | None:
    direction, _, metric = best_by.partition(":")
    scored = [r for r in rows if isinstance(r.get(metric), int | float)]
    if not scored:
        return None
    pick = max if direction == "max" else min
    return pick(scored, key=lambda r: r[metric])


def _by_sampler(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean LLC (over seeds and grid values) per problem and sampler, with the truth where known; not of
    checkpoints, whose mean over training means little (they have their own table)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if isinstance(row.get("llc_mean"), int | float) and row.get("step") is None:
            groups[(str(row["problem"]), str(row["sampler"]))].append(row)
    out = []
    for (problem, sampler), members in sorted(groups.items()):
        errors = [abs(r["llc_rel_error"]) for r in members if isinstance(r.get("llc_rel_error"), int | float)]
        out.append({
            "problem": problem, "sampler": sampler, "cells": len(members),
            "llc_mean": statistics.fmean(r["llc_mean"] for r in members),
            "llc_true": members[0].get("llc_true"),
            "mean_abs_rel_error": statistics.fmean(errors) if errors else None,
        })  # fmt: skip
    return out


def to_markdown(
    sweep_id: str, summary: Summary, results_path: str, figures: dict[str, str] | None = None
) -> str:
    """The sweep's summary as markdown: the Prefect artifact and `llc sweep status` both show it.

    `figures` maps a figure's title to its image source: a path beside summary.md, or the PNG itself as
    a data URI in the Prefect artifact (the UI renders `data:image/` sources inline).
    """
    s = summary
    counts = [s.total, s.ok, s.failed, s.cached, f"{s.success_rate:.1%}"]
    counts += [f"{s.mean_duration_s:.2f} s", f"{s.total_duration_s:.1f} s"]
    header = ["cells", "ok", "failed", "cached", "success rate", "mean duration", "total duration"]
    if s.cancelled:
        counts.insert(3, s.cancelled)
        header.insert(3, "cancelled")
    lines = [f"# Sweep `{sweep_id}`", "", *_table(header, [counts]), "", f"Results: `{results_path}`", ""]
    if s.best is not None:
        metric = s.best_by.partition(":")[2]
        lines += [f"Best cell by {s.best_by}: **{s.best['cell']}** ({metric} = {_fmt(s.best[metric])})", ""]
    if s.by_sampler:
        keys = ["problem", "sampler", "cells", "llc_mean", "llc_true", "mean_abs_rel_error"]
        header = ["problem", "sampler", "cells", "mean LLC", "true LLC", "mean abs rel. error"]
        lines += ["## LLC by sampler", "", *_table(header, [[g[k] for k in keys] for g in s.by_sampler]), ""]
    if s.over_training:
        lines += ["## LLC over training", "", *_over_training(s.over_training), ""]
    if figures:
        lines += ["## Figures", ""]
        lines += [
            line for title, src in figures.items() for line in (f"### {title}", "", f"![{title}]({src})", "")
        ]
    if s.errors:
        keys = ["cell", "error_type", "stage", "attempts"]
        listed = [[r[k] for k in keys] for r in s.errors[:MAX_LISTED_ERRORS]]
        lines += ["## Failed cells", "", *_table(["cell", "error", "stage", "attempts"], listed)]
        if len(s.errors) > MAX_LISTED_ERRORS:
            lines += ["", f"... and {len(s.errors) - MAX_LISTED_ERRORS} more in errors.csv"]
    return "\n".join(lines) + "\n"


def _over_training(curves: list[Curve]) -> list[str]:
    """λ̂ ± se of each series (a column) at each checkpoint's step (a row), with L0 there."""
    cells = {(c.series, step): f"{m:.4g} ± {se:.2g}" for c in curves
             for step, m, se in zip(c.steps, c.llc_mean, c.llc_se, strict=True)}  # fmt: skip
    losses: dict[int, list[float]] = defaultdict(list)
    for curve in curves:
        for step, loss in zip(curve.steps, curve.loss, strict=True):
            if loss is not None:
                losses[step].append(loss)
    steps = sorted({step for curve in curves for step in curve.steps})
    rows = [
        [step, statistics.fmean(losses[step]) if losses[step] else None]
        + [cells.get((c.series, step)) for c in curves]
        for step in steps[:MAX_LISTED_STEPS]
    ]
    more = (
        [f"... and {len(steps) - MAX_LISTED_STEPS} more steps in results.csv"]
        if len(steps) > MAX_LISTED_STEPS
        else []
    )
    return [*_table(["step", "L0", *(c.series for c in curves)], rows), *more]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows),
    ]


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
