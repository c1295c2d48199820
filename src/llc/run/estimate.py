"""`llc.estimate`: the LLC of your own model on its own data, from Python, with any sampler.

(A module llc/estimate.py would shadow the function `llc.estimate` once imported, hence this name.)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import arviz as az
import torch
from pydantic import ValidationError

from llc.config import FAMILY_KEYS, IN_MEMORY_MODULE, RunConfig, describe_validation_error
from llc.errors import ConfigError
from llc.modules.model import LossFn
from llc.problems.build import Problem
from llc.problems.module import Data, OutputElement, as_tensors, module_problem, object_fingerprint
from llc.run.experiment import run_llc

# Keys the model and data decide, which an estimate's overrides cannot set (seed and dtype they can).
NOT_OVERRIDABLE = (*(k for k in FAMILY_KEYS if k not in ("seed", "dtype")), "weights", "problem", "true_rank")


@dataclass(frozen=True)
class Estimate:
    """The estimate with its standard error, the run's metrics (as metrics.json), its ArviZ data, and
    its run directory (None without runs_dir)."""

    llc_mean: float
    llc_se: float
    metrics: dict[str, Any]
    idata: az.InferenceData
    run_dir: Path | None


def estimate(
    model: torch.nn.Module,
    data: Data,
    loss: str | LossFn = "mse",
    sampler: str = "sgld",
    runs_dir: str | Path | None = None,
    output: int | str | None = None,
    **overrides: Any,
) -> Estimate:
    """Estimate the LLC of `model` at its current weights (w*) on `data`, with L0 the loss there.

    `loss` is "mse", "cross_entropy" or a callable (output, target) -> per-example losses [batch];
    `output` the index or key of the predictions in a model whose forward returns a tuple or dict;
    `overrides` are the run's sampling keys (chains, steps, warmup, step_size, gamma, nbeta,
    batch_size, precond, seed, device, devices, dtype, gpu_mode, compile, ...). With `runs_dir`, the run
    directory is written as `llc run` writes it, and a later call with the same weights, data and
    settings reuses it. A mistake in any of these is one ConfigError, raised before anything is written.
    """
    config = _config(loss, sampler, overrides)
    x, y = as_tensors(data)
    fingerprint = object_fingerprint(model, x, y, loss, output)
    config = config.with_module_fingerprint(fingerprint)
    chosen = model if output is None else OutputElement(model, output)
    module, x, y = module_problem(config, chosen, (x, y), loss)
    problem = Problem(module, x, y, None, module.flat_parameters())
    if runs_dir is not None:
        result = run_llc(config, Path(runs_dir), problem=problem)
        return _estimate(result.metrics, result.path, keep=True)
    with tempfile.TemporaryDirectory(prefix="llc-estimate-") as scratch:
        result = run_llc(config, Path(scratch), problem=problem)
        return _estimate(result.metrics, result.path, keep=False)


def _config(loss: str | LossFn, sampler: str, overrides: dict[str, Any]) -> RunConfig:
    fixed = sorted(set(overrides) & set(NOT_OVERRIDABLE))
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)}: decided by the model and data you pass, not settable in llc.estimate"
        )
    values = {**overrides, "problem": "module", "sampler": sampler}
    if isinstance(loss, str):
        values["loss"] = loss
    try:
        return RunConfig.model_validate(values, context={IN_MEMORY_MODULE: True})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def _estimate(metrics: dict[str, Any], run_dir: Path, keep: bool) -> Estimate:
    (netcdf,) = run_dir.glob("*.nc")
    idata = az.from_netcdf(netcdf)
    idata.load()  # into memory: a scratch directory is removed when the call returns
    llc_mean, llc_se = metrics.get("llc_mean"), metrics.get("llc_se")
    return Estimate(
        float("nan") if llc_mean is None else llc_mean,
        float("nan") if llc_se is None else llc_se,
        metrics,
        idata,
        run_dir if keep else None,
    )
