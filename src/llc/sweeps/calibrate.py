"""`llc calibrate`: short chains over a grid of step size × nβ (× γ), run as one sweep, read as a
figure and a recommendation (docs/calibration.md).

The recommendation, per setting of nβ and γ: the largest step size that is healthy (no flag, no
diverged chain, R-hat below R_HAT_MAX) and whose estimate agrees within PLATEAU with the next smaller
healthy step's: the estimate no longer depends on the step there, and the largest such step mixes
fastest. Among the settings of nβ and γ, the one whose recommended run has the largest ESS.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz as az
import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure

from llc.config import RunConfig
from llc.rundir import atomic_write

STEP_SIZES = {
    "sgld": [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3],
    "sghmc": [1e-7, 3e-7, 1e-6, 3e-6, 1e-5, 3e-5, 1e-4],
}
STEPS = 1000  # short chains: enough to see a level and a divergence, not to report a result
# Without a recommendation at STEPS, the grid runs again with longer chains, up to this many steps: weak
# localization (γ = 1, the known-λ problems' default) mixes slowly, and rrr [5,3,5] needs ~3000 steps.
MAX_STEPS = 4000
# Keys recommended.yaml always holds (the step was tuned under them); other keys where they differ
# from the defaults.
RECOMMENDED_KEYS = (
    "sampler", "problem", "n_data", "batch_size", "steps", "warmup", "gamma", "nbeta", "step_size",
)  # fmt: skip
NOT_RECOMMENDED = ("run_id", "family_id", "threads")
WARMUP = 100
PLATEAU = 0.1  # neighbouring step sizes whose estimates differ by less than this agree
R_HAT_MAX = 1.1


def calibration_study(
    sampler: str,
    overrides: dict[str, Any],
    preset: str | None,
    step_sizes: list[float],
    nbetas: list[float] | None,
    gammas: list[float] | None,
) -> dict[str, Any]:
    """The inline study of a calibration: the run's settings as its base, the grid as its axes."""
    grid: dict[str, list[Any]] = {"step_size": list(step_sizes)}
    if nbetas:
        grid["nbeta"] = list(nbetas)
    if gammas:
        grid["gamma"] = list(gammas)
    base = {"steps": STEPS, "warmup": WARMUP, "eval_every": 50, **overrides}
    return {
        "name": f"calibrate-{sampler}",
        "preset": preset,
        "base": base,
        "samplers": [{"name": sampler, "overrides": {"sampler": sampler}}],
        "grid": grid,
    }


@dataclass(frozen=True)
class Recommendation:
    overrides: dict[str, Any]  # what to set: step_size, and nbeta / gamma where the grid varied them
    reason: str
    row: dict[str, Any] | None  # the recommended cell's results row


def healthy(row: dict[str, Any]) -> bool:
    """A cell that ran, raised no flag, lost no chain and whose chains agree."""
    r_hat = row.get("r_hat")
    return (
        row.get("status") == "ok"
        and row.get("trusted") is True
        and not row.get("chains_diverged")
        and r_hat is not None
        and r_hat < R_HAT_MAX
    )


def recommend(rows: list[dict[str, Any]], varied: list[str]) -> Recommendation:
    """The recommendation (module docstring) from a calibration's results rows."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(row.get(k) for k in varied if k != "step_size")].append(row)
    picks = []
    for key, members in groups.items():
        ok = sorted((r for r in members if healthy(r)), key=lambda r: r["step_size"])
        for smaller, larger in zip(ok[-2::-1], ok[:0:-1], strict=True):
            if abs(larger["llc_mean"] - smaller["llc_mean"]) <= PLATEAU * abs(smaller["llc_mean"]):
                picks.append((key, larger, smaller))
                break
    if not picks:
        return Recommendation(
            {},
            "no two neighbouring healthy step sizes agree within "
            f"{PLATEAU:.0%}: widen the grid towards smaller steps, or raise steps",
            None,
        )
    _, best, smaller = max(picks, key=lambda p: p[1].get("ess_bulk") or 0.0)
    overrides = {k: best[k] for k in varied}
    reason = (
        f"step_size={best['step_size']:g} is the largest healthy step whose estimate "
        f"({best['llc_mean']:.4g}) agrees within {PLATEAU:.0%} with the next smaller one "
        f"({smaller['step_size']:g}: {smaller['llc_mean']:.4g})"
    )
    if len(picks) > 1:
        reason += f"; of {len(picks)} settings of {', '.join(k for k in varied if k != 'step_size')} "
        reason += "with such a step, it has the largest ESS"
    return Recommendation(overrides, reason, best)


def step_schedule(steps: int | None) -> list[int]:
    """The chain lengths calibration tries in turn: the one given, else STEPS doubled up to MAX_STEPS."""
    if steps is not None:
        return [steps]
    schedule = [STEPS]
    while schedule[-1] * 2 <= MAX_STEPS:
        schedule.append(schedule[-1] * 2)
    return schedule


def recommended_settings(row: dict[str, Any], preset: str | None) -> dict[str, Any]:
    """Every setting the recommended cell ran with that the recommendation depends on: its preset,
    RECOMMENDED_KEYS, and every other key that differs from the defaults (from its config.json)."""
    config = json.loads((Path(row["run_dir"]) / "config.json").read_text())
    settings: dict[str, Any] = {"preset": preset}  # null: none (a config file's preset replaces --preset)
    # A cell that stepped on all its points (your own model, no batch_size given: full_batch_up_to) is
    # reproduced by leaving batch_size out again; the 256 its config.json shows would take minibatches.
    all_points = "full_batch_up_to" in config
    for key, value in config.items():
        if (
            key in NOT_RECOMMENDED
            or key not in RunConfig.model_fields
            or (key == "batch_size" and all_points)
        ):
            continue
        default = json.loads(json.dumps(RunConfig.model_fields[key].default))
        if key in RECOMMENDED_KEYS or value != default:
            settings[key] = value
    return settings


def write_recommendation(out: Path, sampler: str, preset: str | None, rec: Recommendation) -> Path:
    """recommended.yaml: the recommended cell's settings, usable as is (`llc run --config`, a study's
    `base: recommended.yaml`), and the reason."""
    path = out / "recommended.yaml"
    lines = [f"# llc calibrate ({sampler}): {rec.reason}"]
    if not rec.overrides or rec.row is None:
        return atomic_write(path, ("\n".join(lines) + "\n{}\n").encode())
    lines += [
        f"# use as is: llc run --config {path}",
        "# in a study: base: recommended.yaml (a path beside the study file); raise steps for a result",
    ]
    body = yaml.safe_dump(recommended_settings(rec.row, preset), sort_keys=False)
    return atomic_write(path, ("\n".join(lines) + "\n" + body).encode())


def draw_calibration(rows: list[dict[str, Any]], varied: list[str], path: Path) -> Path:
    """Three panels: the running mean LLC of each cell (a colour per step size; faint: not healthy), the
    mean LLC ± its standard error against the step size (hollow: not healthy; a line per setting of nβ
    and γ), and the diverged chains and MALA acceptance against the step size."""
    fig = Figure(figsize=(15, 4.5), layout="constrained")
    traces, means, health = fig.subplots(1, 3)
    ok = [r for r in rows if r.get("status") == "ok"]
    step_sizes = sorted({r["step_size"] for r in ok})
    palette = matplotlib.colormaps["viridis"]
    colour = {s: palette(i / max(len(step_sizes) - 1, 1)) for i, s in enumerate(step_sizes)}
    by_group: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in ok:
        label = ", ".join(f"{k}={row.get(k):g}" for k in varied if k != "step_size") or "default nβ, γ"
        by_group[label].append(row)
    markers = "os^vD<>"
    for (label, members), marker in zip(sorted(by_group.items()), markers * len(by_group), strict=False):
        members = sorted(members, key=lambda r: r["step_size"])
        steps = [r["step_size"] for r in members]
        means.plot(steps, [_num(r.get("llc_mean")) for r in members], "-", color="0.6", lw=1, zorder=1)
        for r in members:
            c, fill = colour[r["step_size"]], colour[r["step_size"]] if healthy(r) else "none"
            means.errorbar(r["step_size"], _num(r.get("llc_mean")), yerr=_num(r.get("llc_se")), fmt=marker,
                           color=c, markerfacecolor=fill, capsize=3, zorder=2)  # fmt: skip
            running = _running_mean(Path(r["run_dir"]))
            if running is not None:
                traces.plot(running, color=c, alpha=1.0 if healthy(r) else 0.3, lw=1)
        chains = [max(_num(r.get("chains_used")) + _num(r.get("chains_diverged")), 1) for r in members]
        diverged = [_num(r.get("chains_diverged")) / c for r, c in zip(members, chains, strict=True)]
        health.plot(steps, diverged, "x--", color="tab:red", label=f"diverged ({label})")
        mala = [_num(r.get("mala_acceptance_mean")) for r in members]
        health.plot(steps, mala, marker + "-", color="tab:blue", label=f"MALA acceptance ({label})")
    for s in step_sizes:
        traces.plot([], [], color=colour[s], label=f"step {s:g}")
    true = next((r.get("llc_true") for r in rows if r.get("llc_true")), None)
    if true:
        means.axhline(true, color="k", ls=":", label="true λ")
        means.legend(fontsize=7)
    means.set(xscale="log", xlabel="step size", ylabel="mean LLC ± se",
              title="estimate (hollow: not healthy)")  # fmt: skip
    traces.set(xlabel="draw", ylabel="running mean LLC", title="traces (faint: not healthy)")
    traces.legend(fontsize=7, title="colour = step size", title_fontsize=7)
    health.set(xscale="log", xlabel="step size", ylabel="fraction", ylim=(-0.05, 1.05),
               title="diverged chains and MALA acceptance")  # fmt: skip
    health.legend(fontsize=7)
    fig.savefig(path, dpi=110)
    return path


def _running_mean(run_dir: Path) -> np.ndarray | None:
    """The running mean over draws of the LLC averaged over the healthy chains, from the run's trace."""
    traces = sorted(run_dir.glob("*.nc"))
    if not traces:
        return None
    llc = az.from_netcdf(traces[0]).posterior["llc"].values
    kept = llc[~np.isnan(llc).any(axis=1)]
    if not kept.size:
        return None
    per_draw = kept.mean(axis=0)
    return np.cumsum(per_draw) / np.arange(1, per_draw.size + 1)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else math.nan
