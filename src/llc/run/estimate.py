"""`llc.estimate`: the LLC of your own model on its own data, from Python, with any sampler.

(A module llc/estimate.py would shadow the function `llc.estimate` once imported, hence this name.)
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
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
from llc.problems.stream import as_source, fingerprint, is_streamed, loader_batch_size
from llc.run.experiment import LLCExperiment, run_llc
from llc.run.parts import Refinement, check
from llc.samplers.registry import MINIBATCH_SAMPLERS

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
    columns: Sequence[str] | None = None,
    restrict: Restriction | None = None,
    loss_data: Data | torch.Tensor | None = None,
    **overrides: Any,
) -> Estimate | dict[str, Estimate]:
    """Estimate the LLC of `model` at its current weights (w*) on `data`, with L0 the loss there.

    `loss` is "mse", "cross_entropy" or a callable (output, target) -> per-example losses [batch];
    `output` the index or key of the predictions in a model whose forward returns a tuple or dict;
    `data` an (x, y) pair of tensors or a TensorDataset (held in memory), or a DataLoader, a map-style or
    iterable Dataset, or a HuggingFace dataset (`columns`: its input and target), read a batch at a
    time (a DataLoader's batch size is the default batch_size);
    `overrides` are the run's sampling keys (chains, steps, warmup, step_size, gamma, nbeta,
    batch_size, precond, seed, device, devices, dtype, gpu_mode, compile, ...). With `runs_dir`, the run
    directory is written as `llc run` writes it, and a later call with the same weights, data and
    settings reuses it; without it, nothing is written (the draws stay in memory, no plots). A mistake
    in any of these is one ConfigError, raised before anything is written.

    `restrict` estimates the LLC of a part of the model, the other weights held at w*: a glob over
    `model.named_parameters()` names or a callable (name, param) -> bool or mask gives that part's
    Estimate; a mapping {part name: glob | callable | {parameter name: mask}} (such as llc.heads(model))
    a dict of Estimates, all parts sampled as one run. `loss_data` (a data set as `data`, or a boolean
    mask over data's examples) is where the LLC's loss is evaluated, the posterior staying data's.
    """
    batch_size = loader_batch_size(data)
    if batch_size is not None and sampler in MINIBATCH_SAMPLERS and "batch_size" not in overrides:
        overrides = {**overrides, "batch_size": batch_size}
    config = estimate_config(loss, sampler, overrides)
    given = GivenData.of(data, config, columns)
    parts, single = resolve(model, restrict) if restrict is not None else (None, False)
    if parts is not None:
        check(parts, sampler)
        if config.compile is True:
            raise ConfigError("restrict runs eager (its masks are not compiled): set compile=auto or false")
    eval_data = _loss_data(loss_data, given)
    fingerprint = _refined_fingerprint(given.fingerprint(model, loss, output), parts, eval_data)
    config = config.with_module_fingerprint(fingerprint)
    problem = module_as_problem(config, model, given.data, loss, output)
    if eval_data is not None:
        dtype = problem.x.dtype if problem.x.is_floating_point() else None
        eval_data = tuple(t.to(dtype) if dtype and t.is_floating_point() else t for t in eval_data)  # type: ignore[assignment]
    return run_estimate(config, problem, runs_dir, Refinement(parts, single, eval_data))


@dataclass(frozen=True)
class GivenData:
    """The data as given (tensors, or a streamed source read a batch at a time), with the points that
    fingerprint it (all of them for tensors) and, for a stream, its content digest."""

    data: Data
    x: torch.Tensor
    y: torch.Tensor
    digest: str | None

    @classmethod
    def of(cls, data: Data, config: RunConfig, columns: Sequence[str] | None) -> GivenData:
        if is_streamed(data):
            source = as_source(data, getattr(torch, config.state_dtype), columns)
            digest, (x, y) = fingerprint(source)
            return cls(source, x, y, digest)
        if columns is not None:
            raise ConfigError("columns= names the input and target of a HuggingFace dataset; data is tensors")
        x, y = as_tensors(data)
        return cls((x, y), x, y, None)

    def fingerprint(self, model: torch.nn.Module, loss: str | LossFn, output: int | str | None) -> str:
        return object_fingerprint(model, self.x, self.y, loss, output, self.digest)


def module_as_problem(
    config: RunConfig, model: torch.nn.Module, data: Data, loss: str | LossFn, output: int | str | None
) -> Problem:
    """The model, checked on its data (each mistake a ConfigError), as the problem a run samples."""
    chosen = model if output is None else OutputElement(model, output)
    module, x, y, streamed = module_problem(config, chosen, data, loss)
    return Problem(module, x, y, None, module.flat_parameters(), streamed)


def run_estimate(
    config: RunConfig, problem: Problem, runs_dir: str | Path | None, refinement: Refinement | None = None
) -> Estimate | dict[str, Estimate]:
    """Run (or, with runs_dir, reuse) the estimate; without runs_dir nothing is written anywhere. With
    several parts asked for as a mapping, one Estimate per part."""
    per_part = refinement is not None and refinement.parts is not None and not refinement.single
    if runs_dir is not None:
        result = run_llc(config, Path(runs_dir), problem=problem, refinement=refinement)
        (netcdf,) = result.path.glob("*.nc")
        return _estimates(result.metrics, az.from_netcdf(netcdf), result.path, per_part)
    measured = LLCExperiment().measure(config, problem, refinement=refinement)
    return _estimates(measured.metrics, measured.idata, None, per_part)


def _loss_data(
    loss_data: Data | torch.Tensor | None, given: GivenData
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """loss_data's points: a data set's, or the training examples a boolean mask [n] picks."""
    if loss_data is None:
        return None
    x, y = given.x, given.y
    if isinstance(loss_data, torch.Tensor) and loss_data.dtype == torch.bool:
        if given.digest is not None:
            raise ConfigError(
                "loss_data: a mask picks examples of data held in memory, and this data is streamed; pass "
                "loss_data as its own data set"
            )
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


def estimate_config(loss: str | LossFn, sampler: str, overrides: dict[str, Any]) -> RunConfig:
    """The run config of an estimate with these settings; a mistake is one ConfigError."""
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
    metrics: dict[str, Any], idata: az.InferenceData, run_dir: Path | None, per_part: bool
) -> Estimate | dict[str, Estimate]:
    """The run's Estimate, or with `per_part` one per part (its chains of the run's idata)."""
    if not per_part:
        return _estimate(metrics, idata, run_dir)
    chains = int(idata.posterior.attrs["chains_per_part"])
    return {
        name: _estimate(part, idata.isel(chain=slice(k * chains, (k + 1) * chains)), run_dir)
        for k, (name, part) in enumerate(metrics["parts"].items())
    }


def _estimate(metrics: dict[str, Any], idata: az.InferenceData, run_dir: Path | None) -> Estimate:
    llc_mean, llc_se = metrics.get("llc_mean"), metrics.get("llc_se")
    return Estimate(
        float("nan") if llc_mean is None else llc_mean,
        float("nan") if llc_se is None else llc_se,
        metrics,
        idata,
        run_dir,
    )
