"""Package an LLC run as ArviZ InferenceData, summarize its convergence, and save it as netCDF."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import arviz as az
import numpy as np

from llc.rundir import publish


def to_inference_data(
    llc: np.ndarray,
    loss: np.ndarray,
    w_proj: np.ndarray,
    sample_stats: dict[str, np.ndarray] | None = None,
    attrs: dict | None = None,
) -> az.InferenceData:
    """ArviZ data: posterior `llc`, `loss` [chain, draw] and `w_proj` [chain, draw, w_proj_dim]."""
    idata = az.from_dict(
        posterior={"llc": np.asarray(llc), "loss": np.asarray(loss), "w_proj": np.asarray(w_proj)},
        sample_stats={k: np.asarray(v) for k, v in sample_stats.items()} if sample_stats else None,
        dims={"w_proj": ["w_proj_dim"]},
    )
    idata.posterior.attrs.update({k: _netcdf_attr(k, v) for k, v in (attrs or {}).items()})
    return idata


def _netcdf_attr(key: str, value: object) -> str | int | float:
    if isinstance(value, np.generic):
        value = value.item()
    # netCDF has no boolean attribute type, and h5netcdf refuses to write one.
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str | int | float):
        return value
    raise TypeError(f"attr {key!r}={value!r}: netCDF attributes must be str, int, float or bool")


def finite_chains(llc: np.ndarray) -> np.ndarray:
    """Indices of the chains with no NaN anywhere; a chain that diverged at any draw is dropped whole."""
    return np.flatnonzero(~np.isnan(np.asarray(llc, dtype=float)).any(axis=1))


def summarize(llc: np.ndarray) -> dict[str, float]:
    """Mean, sd, standard error and ArviZ ESS / R-hat of the LLC over the chains that never diverged."""
    draws = np.asarray(llc, dtype=float)[finite_chains(llc)]
    used = draws.shape[0]
    if used == 0:
        stats = ("llc_mean", "llc_std", "llc_se", "ess_bulk", "ess_tail", "r_hat")
        return {**dict.fromkeys(stats, math.nan), "chains_used": 0}
    sd = float(np.std(draws, ddof=1))
    ess_bulk = float(az.ess(draws, method="bulk"))
    return {
        "llc_mean": float(np.mean(draws)),
        "llc_std": sd,
        "llc_se": sd / math.sqrt(ess_bulk),
        "ess_bulk": ess_bulk,
        "ess_tail": float(az.ess(draws, method="tail")),
        # R-hat compares chains; ArviZ only logs a warning and returns NaN for one.
        "r_hat": float(az.rhat(draws)) if used >= 2 else math.nan,
        "chains_used": used,
    }


def trend(llc: np.ndarray) -> dict[str, float]:
    """Whether the estimate was still rising: the mean LLC of the last quarter of the draws over the
    second quarter's, as a fraction of the estimate (`llc_rise`) and in standard errors (`llc_rise_z`),
    with the chains' spread of that rise as its standard error (chains are independent, draws are not)."""
    draws = np.asarray(llc, dtype=float)[finite_chains(llc)]
    if draws.shape[0] < 2 or draws.shape[1] < 8:
        return {}
    quarters = np.stack([q.mean(axis=1) for q in np.array_split(draws, 4, axis=1)], axis=1)
    rise = quarters[:, 3] - quarters[:, 1]
    se = float(np.std(rise, ddof=1)) / math.sqrt(rise.size)
    scale = abs(float(np.mean(draws)))
    return {
        "llc_rise": float(np.mean(rise)) / scale if scale > 0 else math.nan,
        "llc_rise_z": float(np.mean(rise)) / se if se > 0 else math.nan,
    }


def spread(llc: np.ndarray, w_proj: np.ndarray, gamma: float) -> dict[str, float]:
    """How far the chains went from w* along the trace's random directions: γ·E[((w - w*)·u)²] over the
    last quarter of the draws (`spread_gamma`: 1 where the localization alone bounds them) and its growth
    from the second quarter (`spread_growth`: about 2 for a free random walk, 1 once bounded)."""
    proj = np.asarray(w_proj, dtype=float)[finite_chains(llc)]
    if gamma <= 0 or proj.shape[0] == 0 or proj.shape[1] < 8 or proj.shape[2] == 0:
        return {}
    quarters = [float(np.mean(np.square(q))) for q in np.array_split(proj, 4, axis=1)]
    growth = quarters[3] / quarters[1] if quarters[1] > 0 else math.nan
    return {"spread_gamma": gamma * quarters[3], "spread_growth": growth}


def write_netcdf(idata: az.InferenceData, path: Path) -> Path:
    """Write idata to path atomically: a reader sees the old file or the complete new one, never a part."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        idata.to_netcdf(tmp)
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
