"""Checkpoints in a study: `weights` as a glob, a list of files, or {files, steps}; one cell per file.

A checkpoint's step is the last integer in its file name (`step_1200.pt` → 1200) unless a `steps` list
is given beside the files. Relative paths are read from the study file's folder, so a study runs the
same from any working directory; the `checkpoint` column keeps the path as written or as the glob matched.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY = "weights"
_GLOB = re.compile(r"[*?\[]")
_INTEGER = re.compile(r"\d+")


@dataclass(frozen=True)
class Checkpoint:
    path: str  # as the study wrote it, or as its glob matched
    file: Path  # absolute: what the cell's config gets
    step: int


def is_checkpoint_set(value: Any) -> bool:
    """A glob, a list of files or {files, steps}; a single file path is a plain config value."""
    return isinstance(value, list | dict) or (isinstance(value, str) and bool(_GLOB.search(value)))


def expand(value: Any, root: Path) -> list[Checkpoint]:
    """The checkpoints of a set, sorted by step; a ValueError says what is wrong with it."""
    steps: list[Any] | None = None
    if isinstance(value, dict):
        if unknown := sorted(set(value) - {"files", "steps"}):
            raise ValueError(f"a checkpoint set has keys files and steps, not {unknown}")
        if "files" not in value:
            raise ValueError("a checkpoint set needs files: a glob or a list of state_dict files")
        value, steps = value["files"], value.get("steps")
    paths = _paths(value, root)
    if steps is None:
        steps = [_step_in_name(path) for path in paths]
    elif not isinstance(steps, list) or len(steps) != len(paths):
        raise ValueError(f"steps must list one integer per file: {len(paths)} files, steps {steps!r}")
    elif not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in steps):
        raise ValueError(f"steps must be integers >= 0, got {steps!r}")
    if repeated := sorted({s for s in steps if steps.count(s) > 1}):
        raise ValueError(f"two checkpoints have the same step {repeated[0]}: give steps beside the files")
    found = [Checkpoint(p, _absolute(p, root), s) for p, s in zip(paths, steps, strict=True)]
    return sorted(found, key=lambda c: c.step)


def _paths(value: Any, root: Path) -> list[str]:
    if isinstance(value, str):
        pattern = value if Path(value).is_absolute() else str(root / value)
        matched = sorted(glob.glob(pattern))
        if not matched:
            raise ValueError(f"no checkpoint matches {value!r} (looked in {root})")
        # Keep the match as the study wrote its pattern: relative patterns give relative paths.
        return [m if Path(value).is_absolute() else str(Path(m).relative_to(root)) for m in matched]
    if not value or not all(isinstance(p, str) and p for p in value):
        raise ValueError(f"files must be a glob or a non-empty list of paths, got {value!r}")
    if missing := [p for p in value if not _absolute(p, root).is_file()]:
        raise ValueError(f"no such checkpoint file {missing[0]!r} (looked in {root})")
    return list(value)


def _step_in_name(path: str) -> int:
    numbers = _INTEGER.findall(Path(path).stem)
    if not numbers:
        raise ValueError(f"no integer in the file name {path!r} to take as its step: give steps beside files")
    return int(numbers[-1])


def _absolute(path: str, root: Path) -> Path:
    return Path(path) if Path(path).is_absolute() else (root / path).resolve()
