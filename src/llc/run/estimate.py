"""`llc.estimate`: the LLC of your own model on its own data, from Python, with any sampler.

(A module llc/estimate.py would shadow the function `llc.estimate` once imported, hence this name.)
"""

from __future__ import annotations

import hashlib
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
from llc.modules.parts import Part, Restriction, resolve
from llc.problems.build import Problem
from llc.problems.module import Data, OutputElement, as_tensors, module_problem, object_fingerprint
from llc.run.experiment import run_llc
from llc.run.parts import Refinement, check

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
    restrict: Restriction | None = None,
    loss_data: Data | torch.Tensor | None = None,
    **overrides: Any,
) -> Estimate | dict[str, Estimate]:
    """Estimate the LLC of `model` at its current weights (w*) on `data`, with L0 the loss there.

    `loss` is "mse", "cross_entropy" or a callable (output, target) -> per-example losses [batch];
    `output` the index or key of the predictions in a model whose forward returns a tuple or dict;
    `overrides` are the run's sampling keys (chains, steps, warmup, step_size, gamma, nbeta,
    batch_size, precond, seed, device, dtype, gpu_mode, compile, ...). With `runs_dir`, the run
    directory is written as `llc run` writes it, and a later call with the same weights, data and
    settings reuses it. A mistake in any of these is one ConfigError, raised before anything is written.

    `restrict` estimates the LLC of a part of the model, the other weights held at w*: a glob over
    `model.named_parameters()` names or a callable (name, param) -> bool or mask gives that part's
    Estimate; a mapping {part name: glob | callable | {parameter name: mask}} (such as llc.heads(model))
    a dict of Estimates, all parts sampled as one run. `loss_data` (a data set as `data`, or a boolean
    mask over data's examples) is where the LLC's loss is evaluated, the posterior staying data's.
    """
    config = _config(loss, sampler, overrides)
    x, y = as_tensors(data)
    parts, single = resolve(model, restrict) if restrict is not None else (None, False)
    if parts is not None:
        check(parts, sampler)
        if config.compile is True:
            raise ConfigError("restrict runs eager (its masks are not compiled): set compile=auto or false")
    eval_data = _loss_data(loss_data, x, y)
    fingerprint = object_fingerprint(model, x, y, loss, output)
    config = config.with_module_fingerprint(_refined_fingerprint(fingerprint, parts, eval_data))
    chosen = model if output is None else OutputElement(model, output)
    module, x, y = module_problem(config, chosen, (x, y), loss)
    problem = Problem(module, x, y, None, module.flat_parameters())
    if eval_data is not None:
        dtype = x.dtype if x.is_floating_point() else None
        eval_data = tuple(t.to(dtype) if dtype and t.is_floating_point() else t for t in eval_data)  # type: ignore[assignment]
    refinement = Refinement(parts, single, eval_data)
    if runs_dir is not None:
        result = run_llc(config, Path(runs_dir), problem=problem, refinement=refinement)
        return _estimates(result.metrics, result.path, keep=True, per_part=parts is not None and not single)
    with tempfile.TemporaryDirectory(prefix="llc-estimate-") as scratch:
        result = run_llc(config, Path(scratch), problem=problem, refinement=refinement)
        return _estimates(result.metrics, result.path, keep=False, per_part=parts is not None and not single)


def _loss_data(
    loss_data: Data | torch.Tensor | None, x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """loss_data's points: a data set's, or the training examples a boolean mask [n] picks."""
    if loss_data is None:
        return None
    if isinstance(loss_data, torch.Tensor) and loss_data.dtype == torch.bool:
        if tuple(loss_data.shape) != (x.shape[0],):
            raise ConfigError(
                f"loss_data: a boolean mask over the data's examples has shape ({x.shape[0]},), got "
                f"{tuple(loss_data.shape)}"
            )
        if not loss_data.any():
            raise ConfigError("loss_data: the mask picks no example; pick at least one")
        return x[loss_data], y[loss_data]
    ex, ey = as_tensors(loss_data)
    if ex.shape[1:] != x.shape[1:] or ey.shape[1:] != y.shape[1:]:
        raise ConfigError(
            f"loss_data: examples shaped {tuple(ex.shape[1:])} -> {tuple(ey.shape[1:])}, the data's "
            f"{tuple(x.shape[1:])} -> {tuple(y.shape[1:])}; give points of the same kind"
        )
    return ex, ey


def _refined_fingerprint(
    fingerprint: str, parts: list[Part] | None, eval_data: tuple[torch.Tensor, torch.Tensor] | None
) -> str:
    """The fingerprint with the parts' masks and loss_data's points, when given (else unchanged)."""
    if parts is None and eval_data is None:
        return fingerprint
    digest = hashlib.sha256(fingerprint.encode())
    for part in parts or ():
        digest.update(f"part:{part.name}:{part.description}".encode())
        digest.update(part.mask.numpy().tobytes())
    for tensor in eval_data or ():
        digest.update(f"loss_data:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


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


def _estimates(
    metrics: dict[str, Any], run_dir: Path, keep: bool, per_part: bool
) -> Estimate | dict[str, Estimate]:
    """The run's Estimate, or with `per_part` one per part (its chains of the run's idata)."""
    (netcdf,) = run_dir.glob("*.nc")
    idata = az.from_netcdf(netcdf)
    idata.load()  # into memory: a scratch directory is removed when the call returns
    if not per_part:
        return _estimate(metrics, idata, run_dir, keep)
    parts = metrics["parts"]
    chains = int(idata.posterior.attrs["chains_per_part"])
    return {
        name: _estimate(part, idata.isel(chain=slice(k * chains, (k + 1) * chains)), run_dir, keep)
        for k, (name, part) in enumerate(parts.items())
    }


def _estimate(metrics: dict[str, Any], idata: az.InferenceData, run_dir: Path, keep: bool) -> Estimate:
    llc_mean, llc_se = metrics.get("llc_mean"), metrics.get("llc_se")
    return Estimate(
        float("nan") if llc_mean is None else llc_mean,
        float("nan") if llc_se is None else llc_se,
        metrics,
        idata,
        run_dir if keep else None,
    )
