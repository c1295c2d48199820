"""A cell: one point of a study (problem, sampler, seed, grid values, checkpoint) and its valid config."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from llc.cells.experiments import LLC_EXPERIMENT, config_model, family_id, run_id


class Cell(BaseModel):
    """Immutable and JSON-serializable, so any backend can ship it to wherever the work runs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    experiment: str
    problem: str | None = None
    sampler: str | None = None
    seed: int | None = None
    grid: dict[str, Any] = {}
    checkpoint: str | None = None  # the weights file as the study gave it, and its training step
    step: int | None = None
    config: dict[str, Any]
    run_id: str
    family_id: str | None = None
    # How the cell is run, not what it computes: neither changes run_id, which comes from the config.
    sweep_id: str | None = None
    wandb_mode: Literal["online", "offline", "disabled"] = "disabled"

    def load_config(self) -> BaseModel:
        """The experiment's config model, re-validated from the stored (already valid) values."""
        return config_model(self.experiment).model_validate(self.config)


def lone_cell(config: BaseModel) -> Cell:
    """The cell of a single `llc run` (the LLC experiment on one config), for running it on a backend."""
    sampler = getattr(config, "sampler", None)
    seed = getattr(config, "seed", None)
    return Cell(
        name=cell_name(None, sampler, seed, {}),
        experiment=LLC_EXPERIMENT,
        sampler=sampler,
        seed=seed,
        config=config.model_dump(mode="json"),
        run_id=run_id(LLC_EXPERIMENT, config),
        family_id=family_id(config),
    )


def cell_name(
    problem: str | None, sampler: str | None, seed: int | None, grid: dict[str, Any], step: int | None = None
) -> str:
    """`rrr-sgld-s0-gamma=10-step=500`: the axes that vary, in the order problem, sampler, seed, grid,
    checkpoint; without its `-step=N` the name is the cell's line in the figure over training."""
    parts = [p for p in (problem, sampler) if p is not None]
    if seed is not None:
        parts.append(f"s{seed}")
    parts += [f"{key}={_short(value)}" for key, value in grid.items()]
    if step is not None:
        parts.append(f"step={step}")
    return "-".join(parts) or "cell"


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "x".join(_short(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
