"""`llc.grid`: one LLC estimate of your model per combination of sampling settings, as a DataFrame.

The cells are planned and checked first (every cell's settings, then the model on its data), so a
mistake in any of them is one ConfigError before anything runs; then `_results` runs them one by one.
That loop is the one place where cells that differ only in per-chain settings could become one run
of their chains side by side.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from llc.config import RunConfig
from llc.errors import ConfigError
from llc.modules.model import LossFn
from llc.problems.build import Problem
from llc.problems.module import Data
from llc.run.estimate import GivenData, estimate_config, module_as_problem
from llc.run.experiment import LLCExperiment, run_llc
from llc.rundir import RunDir

# Settings a grid can vary: a list of values for any of these is an axis (in the order given).
AXES = ("sampler", "step_size", "gamma", "nbeta", "seed", "batch_size", "steps")
# A row's results, by column name: the metric each reads.
RESULTS = {
    "llc_mean": "llc_mean",
    "llc_se": "llc_se",
    "trusted": "trusted",
    "flags": "flags",
    "ess": "ess_bulk",
    "rhat": "r_hat",
    "gamma_auto": "gamma_auto",
    "step_size_auto": "step_size_auto",
    "t_sampling_s": "t_sampling_s",
    "run_id": "run_id",
}

# Metrics of the cells computed without runs_dir in this process, by run_id (which names the weights,
# data, loss, settings and code): a repeated cell is not run again.
_computed: dict[str, dict[str, Any]] = {}


def grid(
    model: torch.nn.Module,
    data: Data,
    loss: str | LossFn = "mse",
    runs_dir: str | Path | None = None,
    output: int | str | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """The LLC of `model` at its weights on `data` for every combination of the settings given as lists
    (sampler, step_size, gamma, nbeta, seed, batch_size, steps); other settings are llc.estimate's and
    fixed. One row per cell: its values, then llc_mean, llc_se, trusted, flags, ess, rhat, ..., run_id.
    With runs_dir each cell is a run directory that a later grid reuses; without, cells computed
    before in this process are reused."""
    varied = [name for name, value in settings.items() if name in AXES and isinstance(value, list | tuple)]
    axes = {name: _values(name, settings.pop(name)) for name in varied}
    cells = [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]
    checked = _checked(cells, loss, settings)
    given = GivenData.of(data, checked[0], columns=None)
    fingerprint = given.fingerprint(model, loss, output)
    configs = [config.with_module_fingerprint(fingerprint) for config in checked]
    problem = cache(lambda: module_as_problem(configs[0], model, given.data, loss, output))
    results = _results(configs, problem, runs_dir)
    rows = [
        {**cell, **{column: metrics.get(name) for column, name in RESULTS.items()}}
        for cell, metrics in zip(cells, results, strict=True)
    ]
    return pd.DataFrame(rows, columns=[*axes, *RESULTS])


def _values(name: str, values: list[Any] | tuple[Any, ...]) -> list[Any]:
    if not values:
        raise ConfigError(f"{name}=[]: a grid axis needs at least one value")
    return list(values)


def _checked(cells: list[dict[str, Any]], loss: str | LossFn, fixed: dict[str, Any]) -> list[RunConfig]:
    """Every cell's config; the cells whose settings are wrong make one ConfigError naming the first."""
    configs, failed = [], []
    for cell in cells:
        values = {**fixed, **cell}
        try:
            configs.append(estimate_config(loss, values.pop("sampler", "sgld"), values))
        except ConfigError as exc:
            failed.append((cell, _one_line(str(exc))))
    if failed:
        cell, message = failed[0]
        where = ", ".join(f"{k}={v!r}" for k, v in cell.items())
        more = f" (and {len(failed) - 1} more of the {len(cells)} cells)" if len(failed) > 1 else ""
        raise ConfigError(f"grid cell {where}: {message}{more}" if where else message + more)
    return configs


def _one_line(message: str) -> str:
    """A config's problems (a header, then one line each) as one line: the problems only."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].endswith(":"):
        lines = lines[1:]
    return "; ".join(lines)


def _results(
    configs: list[RunConfig], problem: Callable[[], Problem], runs_dir: str | Path | None
) -> list[dict[str, Any]]:
    """Each cell's metrics, reused where it was computed before, else from one run per cell."""
    results = []
    for config in configs:
        if runs_dir is None:
            if config.run_id not in _computed:
                _computed[config.run_id] = LLCExperiment().measure(config, problem()).metrics
            results.append(_computed[config.run_id])
            continue
        run_dir = RunDir(Path(runs_dir), config.run_id)
        if run_dir.is_complete():
            results.append(run_dir.read_json("metrics.json"))
        else:
            results.append(run_llc(config, Path(runs_dir), problem=problem()).metrics)
    return results
