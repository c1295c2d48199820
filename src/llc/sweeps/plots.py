"""Figures of a whole sweep from its results table: LLC by problem and sampler, and cell durations."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def draw_sweep_plots(rows: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Write the PNGs into out_dir and return their paths (the LLC figure only if a cell has an LLC)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    estimated = [r for r in rows if r["status"] == "ok" and isinstance(r.get("llc_mean"), int | float)]
    if estimated:
        written.append(_llc_by_sampler(estimated, out_dir / "llc_by_sampler.png"))
    written.append(_durations(rows, out_dir / "durations.png"))
    return written


def _llc_by_sampler(rows: list[dict[str, Any]], path: Path) -> Path:
    """One panel per problem: each cell's LLC ± standard error per sampler, the true LLC dashed."""
    by_problem: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_problem[str(row["problem"])].append(row)
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
        ax.set(title=problem, xticks=range(len(samplers)), xticklabels=samplers, ylabel="LLC estimate ± se")
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
