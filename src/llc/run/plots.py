"""Diagnostic figures of one LLC run, drawn by ArviZ over the chains that never diverged.

Figures are built as bare `matplotlib.figure.Figure`s rather than through pyplot, so drawing needs no
GUI backend, changes no global backend setting, and leaves no figure open in pyplot's registry.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import arviz as az
import numpy as np
from matplotlib.figure import Figure

from llc.run.diagnostics import finite_chains

log = logging.getLogger(__name__)

_Draw = Callable[[Figure, az.InferenceData, float | None], None]


@dataclass(frozen=True)
class _Plot:
    name: str
    title: str
    draw: _Draw
    min_chains: int = 1
    figsize: tuple[float, float] = (7, 4.5)


def _running(fig: Figure, idata: az.InferenceData, llc_true: float | None) -> None:
    ax = fig.subplots()
    llc = idata.posterior["llc"]
    running = np.cumsum(llc.values, axis=1) / np.arange(1, llc.sizes["draw"] + 1)
    for chain, mean in zip(llc["chain"].values, running, strict=True):
        ax.plot(llc["draw"].values, mean, lw=1, label=f"chain {chain}")
    if llc_true is not None:
        ax.axhline(llc_true, color="k", ls="--", label=f"true LLC = {llc_true:g}")
    if np.nanmin(running, initial=np.inf) < 0:  # a negative estimate: where zero is matters
        ax.axhline(0, color="0.25", lw=0.8, zorder=0)
    ax.set(xlabel="draw", ylabel="running mean of LLC")
    ax.legend(fontsize="small")


def _rank(fig: Figure, idata: az.InferenceData, _: float | None) -> None:
    az.plot_rank(idata, var_names=["llc"], ax=fig.subplots())


def _trace(fig: Figure, idata: az.InferenceData, _: float | None) -> None:
    az.plot_trace(
        idata, var_names=["llc"], axes=fig.subplots(1, 2, squeeze=False), chain_prop="color", legend=True
    )


def _ess(fig: Figure, idata: az.InferenceData, _: float | None) -> None:
    az.plot_ess(idata, var_names=["llc"], kind="evolution", ax=fig.subplots())


def _autocorr(fig: Figure, idata: az.InferenceData, _: float | None) -> None:
    az.plot_autocorr(idata, var_names=["llc"], combined=True, ax=fig.subplots())


def _energy(fig: Figure, idata: az.InferenceData, _: float | None) -> None:
    az.plot_energy(idata, ax=fig.subplots())


_LLC_PLOTS = (
    _Plot("llc_running.png", "LLC running mean per chain", _running),
    _Plot("llc_rank.png", "LLC rank plot: uniform bars mean the chains agree", _rank, min_chains=2),
    _Plot("llc_trace.png", "LLC trace: per-chain density (left) and draws (right)", _trace, figsize=(10, 4)),
    _Plot("llc_ess_evolution.png", "LLC effective sample size vs draws: should grow linearly", _ess),
    _Plot("llc_autocorr.png", "LLC autocorrelation by lag, chains combined", _autocorr),
)
_ENERGY_PLOT = _Plot("energy.png", "Energy, marginal vs transition: low BFMI means poor exploration", _energy)


def draw_plots(
    idata: az.InferenceData, out_dir: Path, llc_true: float | None = None, flags: Sequence[str] = ()
) -> list[Path]:
    """Write the diagnostic PNGs into out_dir and return their paths; plots it cannot draw are logged.

    `flags`, the checks the run failed, head every figure's title in red: its estimate is not to be trusted.
    """
    total = idata.posterior.sizes["chain"]
    kept_chains = finite_chains(idata.posterior["llc"].values)
    kept = idata.isel(chain=kept_chains)
    # ArviZ numbers the remaining chains 0, 1, ... so the title says which original chains they are.
    dropped = len(kept_chains) < total
    note = f"\nchains {kept_chains.tolist()} of {total}; diverged chains dropped" if dropped else ""
    plots = list(_LLC_PLOTS)
    if "sample_stats" in kept.groups() and "energy" in kept.sample_stats:
        plots.append(_ENERGY_PLOT)
    else:
        log.info("skipping energy.png: no energy in sample_stats")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for plot in plots:
        if len(kept_chains) < plot.min_chains:
            log.warning(
                "skipping %s: %d chains without divergence, needs %d",
                plot.name,
                len(kept_chains),
                plot.min_chains,
            )
            continue
        fig = Figure(figsize=plot.figsize, layout="constrained")
        plot.draw(fig, kept, llc_true)
        if flags:
            fig.suptitle(f"UNTRUSTED ({', '.join(flags)}): see metrics.json flag_reasons\n{plot.title}{note}",
                         color="firebrick")  # fmt: skip
        else:
            fig.suptitle(plot.title + note)
        fig.savefig(out_dir / plot.name, dpi=110)
        written.append(out_dir / plot.name)
    return written
