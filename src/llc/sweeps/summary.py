"""Summarize a results table: counts, how many estimates can be trusted and why not, durations, the best
cell, LLC by problem and sampler, and LLC over training (a sweep over checkpoints), per part of a
restricted run (results.csv `restrict`)."""

from __future__ import annotations

import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from llc.run.health import FIXES

MAX_LISTED_ERRORS = 20
MAX_LISTED_STEPS = 40
MAX_LISTED_FLAGS = 5
FLAGS_DOC = "docs/diagnostics.md#flags-runs-that-cannot-be-trusted"
UNTRUSTED_MARK = "†"


@dataclass(frozen=True)
class Curve:
    """One line of the figure over training: a cell's series (its name less `-step=N`, then `-PART` for a
    part of a restricted run) across checkpoints."""

    problem: str
    series: str
    steps: list[int]
    llc_mean: list[float]
    llc_se: list[float]
    loss: list[float | None]  # L0, the training loss at each checkpoint
    sampler: str = ""
    trusted: list[bool | None] = field(default_factory=list)  # None: the experiment does not say
    part: str = ""  # the part of the model (results.csv `restrict`); "" for a whole-model run

    @property
    def cells(self) -> str:
        """The series of cells this curve's part belongs to: its name less the part."""
        return self.series.removesuffix(f"-{self.part}") if self.part else self.series


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
    trusted: int = 0  # estimates whose run passed every check (each part of a restricted run counts)
    untrusted: int = 0  # estimates that a check flagged (results.csv `flags`)
    parts: bool = False  # rows are parts of restricted runs (results.csv `restrict`)
    flags: list[tuple[str, int]] = field(default_factory=list)  # flag and cells, most common first
    by_sampler: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)
    over_training: list[Curve] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.ok / self.total if self.total else 0.0


def summarize(rows: list[dict[str, Any]], best_by: str) -> Summary:
    """best_by is `max:METRIC` or `min:METRIC`, over the estimates that ended ok. Counts and durations are
    of cells: the parts of a restricted run are rows of one cell."""
    ok = [r for r in rows if r["status"] == "ok"]
    cells = list({r["cell"]: r for r in rows}.values())
    cancelled = sum(r["status"] == "cancelled" for r in cells)
    durations = [float(r["duration_s"] or 0) for r in cells]
    ok_cells = sum(r["status"] == "ok" for r in cells)
    return Summary(
        total=len(cells),
        ok=ok_cells,
        failed=len(cells) - ok_cells - cancelled,
        cached=sum(bool(r["cached"]) for r in cells),
        cancelled=cancelled,
        mean_duration_s=statistics.fmean(durations) if durations else 0.0,
        total_duration_s=sum(durations),
        best_by=best_by,
        best=_best(ok, best_by),
        trusted=sum(r.get("trusted") is True for r in ok),
        untrusted=sum(r.get("trusted") is False for r in ok),
        parts=any(r.get("restrict") is not None for r in rows),
        flags=Counter(flag for r in ok if r.get("trusted") is False for flag in flag_names(r)).most_common(),
        by_sampler=_by_sampler(ok),
        errors=[r for r in cells if r["status"] == "error"],
        over_training=training_curves(rows),
    )


def training_curves(rows: list[dict[str, Any]]) -> list[Curve]:
    """A curve per series of cells over checkpoints (problem, sampler, seed, grid values, part), by step;
    a restricted run's parts in the run's order."""
    series: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and isinstance(row.get("step"), int) and _number(row.get("llc_mean")):
            name = str(row["cell"]).removesuffix(f"-step={row['step']}")
            part = "" if row.get("restrict") is None else f"-{row['restrict']}"
            series[(str(row["problem"] or ""), name + part)].append(row)
    parts = list(dict.fromkeys(str(r["restrict"]) for r in rows if r.get("restrict") is not None))
    curves = []
    for (problem, name), members in sorted(series.items(), key=lambda item: _series_order(item, parts)):
        members.sort(key=lambda r: r["step"])
        curves.append(Curve(
            problem=problem, series=name, steps=[r["step"] for r in members],
            llc_mean=[float(r["llc_mean"]) for r in members],
            llc_se=[float(r["llc_se"]) if _number(r.get("llc_se")) else 0.0 for r in members],
            loss=[float(r["L0"]) if _number(r.get("L0")) else None for r in members],
            sampler=str(members[0]["sampler"]), trusted=[r.get("trusted") for r in members],
            part="" if members[0].get("restrict") is None else str(members[0]["restrict"]),
        ))  # fmt: skip
    return curves


def _series_order(item: tuple[tuple[str, str], list[dict[str, Any]]], parts: list[str]) -> tuple[Any, ...]:
    """By problem and series of cells, then the parts in the order the run reported them."""
    (problem, name), members = item
    part = members[0].get("restrict")
    if part is None:
        return (problem, name, -1)
    return (problem, name.removesuffix(f"-{part}"), parts.index(str(part)))


def flag_names(row: dict[str, Any]) -> list[str]:
    """The checks a row's run failed: results.csv joins them with `;`."""
    flags = row.get("flags")
    return [name for name in str(flags).split(";") if name] if flags else []


def _best(rows: list[dict[str, Any]], best_by: str) -> dict[str, Any] | None:
    """The best of the trusted estimates (of all, where no run was checked): a number the checks reject
    is never shown as a result, so a sweep with none trusted has no best cell."""
    direction, _, metric = best_by.partition(":")
    scored = [r for r in _readable(rows) if isinstance(r.get(metric), int | float)]
    if not scored:
        return None
    pick = max if direction == "max" else min
    return pick(scored, key=lambda r: r[metric])


def _readable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows whose estimate may be read as one: the trusted, or all where no run reports its checks."""
    if all(r.get("trusted") is None for r in rows):
        return rows
    return [r for r in rows if r.get("trusted") is True]


def _by_sampler(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean LLC (over seeds and grid values) per problem and sampler, of the trusted cells only (None where
    none is), with the truth where known; not of checkpoints, whose mean over training means little (they
    have their own table)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if isinstance(row.get("llc_mean"), int | float) and row.get("step") is None:
            part = "" if row.get("restrict") is None else f" · {row['restrict']}"
            groups[(str(row["problem"]), str(row["sampler"]) + part)].append(row)
    out = []
    for (problem, sampler), members in sorted(groups.items()):
        readable = _readable(members)
        errors = [
            abs(r["llc_rel_error"]) for r in readable if isinstance(r.get("llc_rel_error"), int | float)
        ]
        out.append({
            "problem": problem, "sampler": sampler, "cells": len(members),
            "trusted": _trusted_of(members),
            "llc_mean": statistics.fmean(r["llc_mean"] for r in readable) if readable else None,
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
    lines += _trust(s)
    if s.best is not None:
        metric = s.best_by.partition(":")[2]
        among = " among the trusted" if s.trusted else ""
        lines += [
            f"Best cell by {s.best_by}{among}: **{s.best['cell']}** ({metric} = {_fmt(s.best[metric])})",
            "",
        ]
    elif s.untrusted:
        lines += [f"Best cell by {s.best_by}: none, as no cell's estimate is trusted.", ""]
    if s.by_sampler:
        keys = ["problem", "sampler", "cells", "trusted", "llc_mean", "llc_true", "mean_abs_rel_error"]
        header = [
            "problem",
            "sampler",
            "cells",
            "trusted",
            "mean LLC (trusted)",
            "true LLC",
            "mean abs rel. error",
        ]
        if not s.trusted and not s.untrusted:
            header[4] = "mean LLC"
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


def _trust(s: Summary) -> list[str]:
    """How many finished cells passed every check of their run, and the checks the others failed most."""
    if not s.trusted and not s.untrusted:
        return []  # an experiment that does not check its runs
    checked = s.trusted + s.untrusted
    what = "estimates (one per part of each cell)" if s.parts else "cells"
    lines = ["## Trust", "", f"**{s.trusted} of {checked} {what} trusted, {s.untrusted} untrusted**"]
    if not s.flags:
        return [*lines, ""]
    lines[-1] += (
        f": their runs failed a check, so their numbers are not to be read as estimates (each cell's "
        f"checks are in results.csv `flags`; {FLAGS_DOC})."
    )
    listed = [[f"`{name}`", cells, FIXES.get(name, "-")] for name, cells in s.flags[:MAX_LISTED_FLAGS]]
    lines += ["", *_table(["flag", "cells", "what it means, what to change"], listed)]
    if len(s.flags) > MAX_LISTED_FLAGS:
        lines += ["", f"... and {len(s.flags) - MAX_LISTED_FLAGS} more flags in results.csv"]
    return [*lines, ""]


def _trusted_of(rows: list[dict[str, Any]]) -> str | None:
    """`trusted/checked` over the rows whose run was checked; None when none was."""
    checked = [r["trusted"] for r in rows if isinstance(r.get("trusted"), bool)]
    return f"{sum(checked)}/{len(checked)}" if checked else None


def _over_training(curves: list[Curve]) -> list[str]:
    """λ̂ ± se of each series (a column) at each checkpoint's step (a row), with L0 there; an untrusted
    estimate carries a mark."""
    cells = {
        (c.series, step): f"{m:.4g} ± {se:.2g}" + (f" {UNTRUSTED_MARK}" if trusted is False else "")
        for c in curves
        for step, m, se, trusted in zip(c.steps, c.llc_mean, c.llc_se, _trust_of(c), strict=True)
    }
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
    if any(t is False for c in curves for t in c.trusted):
        more += ["", f"{UNTRUSTED_MARK} untrusted: the run failed a check (results.csv `flags`)"]
    return [*_table(["step", "L0", *(c.series for c in curves)], rows), *more]


def _trust_of(curve: Curve) -> list[bool | None]:
    return curve.trusted or [None] * len(curve.steps)


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
