"""Expand a study into cells, validating every cell's config before anything runs."""

from __future__ import annotations

import itertools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from llc.cells.cell import Cell, cell_name
from llc.cells.experiments import LLC_EXPERIMENT, config_model, family_id, run_id
from llc.config import DEVINTERP_NAMES
from llc.errors import ConfigError, format_loc, merge_union_branches, problems
from llc.sweeps import checkpoints
from llc.sweeps.checkpoints import Checkpoint
from llc.sweeps.study import Entry, Loc, Study, StudyError, StudySource, fields_at

MAX_ISSUES = 20


@dataclass(frozen=True)
class Plan:
    """A validated study and its cells, in submission order (neighbouring cells differ in problem)."""

    study: Study
    sweep_id: str
    cells: list[Cell]


def plan_sweep(study: str | Path | dict[str, Any]) -> Plan:
    """Read, validate and expand a study; a StudyError names every bad key with its line."""
    source = StudySource.read(study)
    parsed = source.parse()
    try:
        model = config_model(parsed.experiment)
    except (ConfigError, TypeError) as exc:
        raise StudyError(source.error(("experiment",), str(exc))) from None
    preset = _preset(parsed, source)
    issues: dict[tuple[str, str], list[str]] = defaultdict(list)
    cells = []
    # Problem varies fastest: the first cells submitted belong to different families, so their
    # ERM trainings run side by side instead of queueing on one family's lock.
    for seed_at, sampler_at, combo, problem_at in itertools.product(
        _axis(parsed.seeds),
        _axis(parsed.samplers),
        itertools.product(*parsed.grid.values()),
        _axis(parsed.problems),
    ):
        seed = parsed.seeds[seed_at] if "seed" in model.model_fields else None
        sampler, problem = _entry(parsed.samplers, sampler_at), _entry(parsed.problems, problem_at)
        grid = dict(zip(parsed.grid, combo, strict=True))
        values, origin = _values(
            parsed, model, preset, problem_at, sampler_at, seed_at, grid, "seeds" in source.data
        )
        fallback = _entry_loc(problem_at, sampler_at)
        labels = (problem and problem.name, sampler and sampler.name, seed, grid)
        try:
            points = _checkpoints(values, model, source.root)
        except ValueError as exc:
            where = source.where(origin.get(checkpoints.KEY, fallback))
            issues[(where, f"{checkpoints.KEY}: {exc}")].append(cell_name(*labels))
            continue
        for point in points:
            name = cell_name(*labels, point.step if point else None)
            cell_values = {**values, checkpoints.KEY: str(point.file)} if point else values
            try:
                config = model.model_validate(cell_values)
            except ValidationError as exc:
                errors = merge_union_branches(exc.errors(), model.model_fields)
                for loc, msg in problems(errors, fields_at(model), DEVINTERP_NAMES):
                    where = origin.get(str(loc[0]), fallback) if loc else fallback
                    issues[(source.where(where), f"{format_loc(loc) or 'config'}: {msg}")].append(name)
                continue
            cells.append(_cell(parsed, name, problem, sampler, seed, grid, config, point))
    _check_names(cells, issues)
    if issues:
        raise StudyError(_report(issues))
    sweep_id = f"{parsed.name}-{parsed.study_hash}"
    return Plan(parsed, sweep_id, [cell.model_copy(update={"sweep_id": sweep_id}) for cell in cells])


def _values(
    study: Study,
    model: type[BaseModel],
    preset: dict[str, Any],
    problem_at: int | None,
    sampler_at: int | None,
    seed_at: int,
    grid: dict[str, Any],
    seeds_given: bool,
) -> tuple[dict[str, Any], dict[str, Loc]]:
    """A cell's config values, and for each key the study location that set it (later wins)."""
    values: dict[str, Any] = dict(preset)
    origin: dict[str, Loc] = dict.fromkeys(preset, ("preset",))

    def put(key: str, value: Any, loc: Loc) -> None:
        values[key] = value
        origin[key] = loc

    for key, value in study.base.items():
        put(key, value, ("base", key))
    for axis, at in (("problems", problem_at), ("samplers", sampler_at)):
        if at is None:
            continue
        entry: Entry = getattr(study, axis)[at]
        label = axis[:-1]  # the entry's name fills the config key `problem` / `sampler`
        if label in model.model_fields and label not in entry.overrides:
            put(label, entry.name, (axis, at, "name"))
        for key, value in entry.overrides.items():
            put(key, value, (axis, at, "overrides", key))
    for key, value in grid.items():
        put(key, value, ("grid", key))
    if "seed" in model.model_fields:
        put("seed", study.seeds[seed_at], ("seeds", seed_at))
    elif seeds_given:
        put("seed", study.seeds[seed_at], ("seeds",))  # the model rejects it, naming the line
    return values, origin


def _cell(
    study: Study,
    name: str,
    problem: Entry | None,
    sampler: Entry | None,
    seed: int | None,
    grid: dict[str, Any],
    config: BaseModel,
    point: Checkpoint | None,
) -> Cell:
    return Cell(
        name=name,
        experiment=study.experiment,
        problem=problem.name if problem else None,
        sampler=sampler.name if sampler else None,
        seed=seed,
        grid=grid,
        checkpoint=point.path if point else None,
        step=point.step if point else None,
        config=config.model_dump(mode="json"),
        run_id=run_id(study.experiment, config),
        family_id=family_id(config),
    )


def _checkpoints(values: dict[str, Any], model: type[BaseModel], root: Path) -> list[Checkpoint | None]:
    """One cell per checkpoint when `weights` names a set of them; else the one cell ([None])."""
    value = values.get(checkpoints.KEY)
    if checkpoints.KEY not in model.model_fields or not checkpoints.is_checkpoint_set(value):
        return [None]
    return list(checkpoints.expand(value, root))


def _preset(study: Study, source: StudySource) -> dict[str, Any]:
    if study.preset is None:
        return {}
    if study.experiment != LLC_EXPERIMENT:
        raise StudyError(source.error(("preset",), "presets apply to the LLC experiment only"))
    from llc.config import PRESETS

    if study.preset not in PRESETS:
        raise StudyError(
            source.error(("preset",), f"unknown preset {study.preset!r}; choose one of {sorted(PRESETS)}")
        )
    return PRESETS[study.preset]


def _axis(entries: list[Any]) -> list[int | None]:
    return list(range(len(entries))) or [None]


def _entry(entries: list[Entry], at: int | None) -> Entry | None:
    return None if at is None else entries[at]


def _entry_loc(problem_at: int | None, sampler_at: int | None) -> Loc:
    """Where a whole-config error most likely comes from: the problem entry, else the sampler, else base."""
    if problem_at is not None:
        return ("problems", problem_at)
    if sampler_at is not None:
        return ("samplers", sampler_at)
    return ("base",)


def _check_names(cells: list[Cell], issues: dict[tuple[str, str], list[str]]) -> None:
    seen: set[str] = set()
    for cell in cells:
        if cell.name in seen:
            issues[("grid", f"two cells are both named {cell.name!r}: make the grid values distinct")].append(
                cell.name
            )
        seen.add(cell.name)


def _report(issues: dict[tuple[str, str], list[str]]) -> str:
    lines = []
    for (where, message), names in list(issues.items())[:MAX_ISSUES]:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        lines.append(f"{where}: {message} [cells: {shown}]")
    if len(issues) > MAX_ISSUES:
        lines.append(f"... and {len(issues) - MAX_ISSUES} more problems")
    return "invalid study:\n  " + "\n  ".join(lines)
