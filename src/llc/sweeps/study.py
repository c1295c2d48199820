"""A study file: the axes of a sweep (problems × samplers × seeds × grid) over one experiment.

Every problem is reported as `FILE:LINE: key: message`, the line found from the YAML node marks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llc.cells.experiments import LLC_EXPERIMENT
from llc.config import read_config_file
from llc.errors import ConfigError, Loc, format_loc, problems
from llc.settings import STUDY_OPTIONS, overrides


class StudyError(ConfigError):
    """A study that cannot run; raised before any cell is submitted."""


class Entry(BaseModel):
    """One value of the problems or samplers axis: a label and the config keys it sets."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)


# How the sweep runs: each key overrides the LLC_* setting of the same name (its type, checks and
# description come from llc.settings), and a sweep's flags override these.
Execution = overrides(
    "Execution",
    STUDY_OPTIONS,
    backend_options=(
        dict[str, Any],
        Field(default_factory=dict, description="the backend's own options, e.g. partition or gpu_types"),
    ),
)


class Study(BaseModel):
    """What to sweep. Cells are the cartesian product problems × samplers × grid × seeds."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field("study", pattern=r"^[A-Za-z0-9_.-]+$")
    experiment: str = Field(LLC_EXPERIMENT, pattern=r"^[\w.]+:[\w.]+$")
    preset: str | None = None
    base: dict[str, Any] = Field(default_factory=dict)
    problems: list[Entry] = Field(default_factory=list)
    samplers: list[Entry] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    grid: dict[str, Annotated[list[Any], Field(min_length=1)]] = Field(default_factory=dict)
    execution: Execution = Field(default_factory=Execution)

    @field_validator("problems", "samplers")
    @classmethod
    def _unique_names(cls, entries: list[Entry]) -> list[Entry]:
        if not entries:  # only a list given in the file gets here: a missing key keeps the base config
            raise ValueError("an empty list runs nothing: list at least one entry, or leave the key out")
        names = [e.name for e in entries]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"names must be unique, repeated: {dupes}")
        return entries

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be unique, got {seeds}")
        return seeds

    @property
    def study_hash(self) -> str:
        """Hash of everything that decides the cells (not how they run): the sweep id's suffix."""
        data = self.model_dump(mode="json", exclude={"execution"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


class StudySource:
    """A study's raw mapping and where each of its keys sits in the file, for error messages."""

    def __init__(
        self, data: Any, origin: str, lines: dict[Loc, int] | None = None, root: Path | None = None
    ) -> None:
        self.data = data
        self.origin = origin
        self.lines = lines or {}
        # Where the study's relative paths (checkpoints) start: its file's folder, else the working dir.
        self.root = root or Path.cwd()

    @classmethod
    def read(cls, study: str | Path | dict[str, Any]) -> StudySource:
        """From a YAML file or an inline mapping (no line numbers)."""
        if isinstance(study, dict):
            return cls(study, "<inline study>")
        path = Path(study)
        try:
            text = path.read_text()
        except OSError as exc:
            raise StudyError(f"cannot read study file {path}: {exc.strerror or exc}") from None
        try:
            data = yaml.safe_load(text)
            lines = _key_lines(yaml.compose(text))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise StudyError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
        data = data if data is not None else {}
        if not isinstance(data, dict):
            raise StudyError(f"{path}:1: a study is a mapping of keys (base, problems, samplers, seeds, ...)")
        data.setdefault("name", re.sub(r"[^A-Za-z0-9_.-]", "-", path.stem))
        return cls(_base_from_file(data, path.parent), str(path), lines, path.parent.resolve())

    def where(self, loc: Loc) -> str:
        """`FILE:LINE` of the deepest known key on `loc`."""
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return f"{self.origin}:{self.lines[loc[:end]]}"
        return self.origin

    def error(self, loc: Loc, message: str) -> str:
        return f"{self.where(loc)}: {format_loc(loc) or 'study'}: {message}"

    def parse(self) -> Study:
        """The validated Study, or a StudyError listing every problem with its line."""
        try:
            return Study.model_validate(self.data)
        except ValidationError as exc:
            issues = [self.error(loc, msg) for loc, msg in problems(exc.errors(), fields_at(Study))]
            raise StudyError("invalid study:\n  " + "\n  ".join(issues)) from None


def _base_from_file(data: dict[str, Any], root: Path) -> dict[str, Any]:
    """`base: FILE`: the base keys from a config file beside the study (llc calibrate's
    recommended.yaml), its `preset` the study's unless the study names one."""
    if not isinstance(data.get("base"), str):
        return data
    try:
        base = read_config_file(root / data["base"])
    except ConfigError as exc:
        raise StudyError(f"base: {exc}") from None
    preset = base.pop("preset", None)
    return {**data, "base": base, "preset": data.get("preset", preset)}


def fields_at(model: type[BaseModel]) -> Callable[[Loc], list[str]]:
    """The field names of the (sub)model of `model` a location reaches, for 'did you mean' hints."""
    return functools.partial(_fields_at, model)


def _fields_at(model: type[BaseModel], loc: Loc) -> list[str]:
    for part in loc:
        if isinstance(part, int):
            continue
        annotation = model.model_fields[str(part)].annotation if part in model.model_fields else None
        inner = [a for a in getattr(annotation, "__args__", (annotation,)) if isinstance(a, type)]
        models = [a for a in inner if issubclass(a, BaseModel)]
        if not models:
            return list(model.model_fields)
        model = models[0]
    return list(model.model_fields)


def _key_lines(node: yaml.Node | None, loc: Loc = ()) -> dict[Loc, int]:
    """Map each key path of a composed YAML document to its 1-based line."""
    lines: dict[Loc, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = (*loc, key.value)
            lines[child] = key.start_mark.line + 1
            lines.update(_key_lines(value, child))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[(*loc, i)] = item.start_mark.line + 1
            lines.update(_key_lines(item, (*loc, i)))
    return lines
