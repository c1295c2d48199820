"""How a sweep runs: its options checked once where they enter (flags, the flow's parameters), and resolved
once per sweep: flags over the study's `execution` block over LLC_* settings."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from llc.backends import check_backend
from llc.errors import ConfigError, format_loc, problems
from llc.settings import STUDY_OPTIONS, Settings, load_settings, overrides
from llc.sweeps.plan import Plan, plan_sweep

# The settings a sweep's flags (and the `sweep` flow's parameters of the same names) override.
FLAG_OPTIONS = ("backend", "runs_dir", "max_parallel", "timeout_s", "retries")


class SweepOptions(overrides("SweepFlags", FLAG_OPTIONS)):
    """A sweep as asked for by `llc sweep`, `python flows/sweep.py`, a deployment or a Python call of the
    flow; its fields are the flow's parameters, each flag with its setting's type and checks (None: not
    given). Frozen: made once where the sweep enters, then passed on."""

    study: Path | dict[str, Any] | None = Field(
        None, description="study YAML, or an inline mapping; none: the study setting"
    )
    skip: bool = Field(True, description="reuse complete results of cells")
    backend_options: dict[str, Any] = Field(
        default_factory=dict, description="the backend's own options, over the study's"
    )


def sweep_options(**given: Any) -> SweepOptions:
    """The SweepOptions, checked by the model that declares them; a bad value is a ConfigError naming it."""
    try:
        return SweepOptions.model_validate(given)
    except ValidationError as exc:
        issues = problems(exc.errors(), lambda _: list(SweepOptions.model_fields))
        raise ConfigError("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in issues)) from None


@dataclass(frozen=True)
class Sweep:
    """A sweep ready to run, made once by `prepare`: the options asked for, the study's plan (each cell
    with its W&B mode), the settings resolved for it, and the backend's options (the study's, then the
    flags')."""

    options: SweepOptions
    plan: Plan
    settings: Settings
    backend_options: dict[str, Any]


def prepare(options: SweepOptions, settings: Settings | None = None) -> Sweep:
    """Plan the study and resolve the options; a study or backend that cannot run is a ConfigError.

    Every value was checked where it entered (a flag by SweepOptions, a study key by the study's model,
    an LLC_* variable by Settings), so resolving only combines them.
    """
    settings = settings or load_settings()
    plan = plan_sweep(options.study if options.study is not None else settings.study)
    execution = plan.study.execution
    given = {key: value for key, value in execution if key in STUDY_OPTIONS and value is not None}
    given |= {key: getattr(options, key) for key in FLAG_OPTIONS if getattr(options, key) is not None}
    resolved = settings.model_copy(update=given)
    resolved = resolved.model_copy(update={"runs_dir": resolved.runs_dir.resolve()})  # absolute links
    check_backend(resolved.backend)
    backend_options = {**execution.backend_options, **options.backend_options}
    if resolved.threads_per_cell is not None:
        backend_options = {"threads_per_cell": resolved.threads_per_cell, **backend_options}
    cells = [cell.model_copy(update={"wandb_mode": resolved.wandb_mode}) for cell in plan.cells]
    return Sweep(options, replace(plan, cells=cells), resolved, backend_options)
