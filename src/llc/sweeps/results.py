"""The results table: one row per cell in runs/sweeps/<sweep_id>/results.csv (one per part of a restricted
run, named in its `restrict` column), failures in errors.csv."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

from llc.cells.cell import Cell
from llc.cells.record import CellRecord
from llc.rundir import atomic_write

HEAD = ["sweep_id", "cell", "problem", "sampler", "seed"]
CHECKPOINT = ["checkpoint", "step"]  # after HEAD in a sweep over checkpoints
PART = "restrict"  # then the part of the model a row's estimate is of (a restricted run: metrics' `parts`)
# A part's own `restrict` (the parameters it covers) is renamed: the column `restrict` names the part.
PART_PATTERN = "restrict_pattern"
TAIL = [
    "family_id", "run_id", "status", "cached", "trusted", "flags", "llc_mean", "llc_se", "ess_bulk", "r_hat",
    "llc_true",
    "llc_rel_error", "t_sampling_s", "grad_evals", "duration_s", "attempts", "stage", "error_type", "run_dir",
]  # fmt: skip
ERROR_COLUMNS = [
    "sweep_id", "cell", "run_id", "family_id", "stage", "error_type", "error", "attempts", "duration_s",
    "run_dir", "traceback",
]  # fmt: skip


def sweep_dir(runs_dir: Path, sweep_id: str) -> Path:
    return Path(runs_dir) / "sweeps" / sweep_id


# In a sweep's folder: the jobs its backend submitted (adopted on a restart; `llc sweep cancel`).
JOBS_FILE = "jobs.jsonl"


def result_rows(sweep_id: str, cells: list[Cell], records: dict[str, CellRecord]) -> list[dict[str, Any]]:
    """A row per cell that has a record (a row per part of a restricted run, in the run's order), ordered
    by problem, sampler, seed, then study order."""
    order = {cell.name: i for i, cell in enumerate(cells)}
    rows = [
        row for cell in cells if cell.name in records for row in _rows(sweep_id, cell, records[cell.name])
    ]
    return sorted(
        rows, key=lambda r: (str(r["problem"]), str(r["sampler"]), r["seed"] or 0, order[r["cell"]])
    )


def _rows(sweep_id: str, cell: Cell, record: CellRecord) -> list[dict[str, Any]]:
    """The cell's row, or one per part: the part's own metrics over the run's shared ones (L0, timings)."""
    parts = record.metrics.get("parts")
    if not isinstance(parts, dict) or not parts:
        return [_row(sweep_id, cell, record, dict(record.metrics))]
    shared = {k: v for k, v in record.metrics.items() if k != "parts"}
    return [
        _row(sweep_id, cell, record, {**shared, **_renamed(part)}, {PART: str(name)})
        for name, part in parts.items()
    ]


def _renamed(part: Any) -> dict[str, Any]:
    part = dict(part) if isinstance(part, dict) else {}
    if PART in part:
        part[PART_PATTERN] = str(part.pop(PART))
    return part


def _row(
    sweep_id: str, cell: Cell, record: CellRecord, metrics: dict[str, Any], part: dict[str, str] | None = None
) -> dict[str, Any]:
    if isinstance(metrics.get("flags"), list):  # one cell of the table: names joined by ";"
        metrics["flags"] = ";".join(metrics["flags"])
    row: dict[str, Any] = {
        "sweep_id": sweep_id, "cell": cell.name, "problem": cell.problem, "sampler": cell.sampler,
        "seed": cell.seed, **_checkpoint(cell), **cell.grid, **(part or {}), "family_id": record.family_id,
        "run_id": record.run_id, "status": record.status, "cached": record.cached,
        **{k: metrics.get(k) for k in TAIL if k in metrics},
        "duration_s": round(record.duration_s, 3), "attempts": record.attempts, "stage": record.stage,
        "error_type": record.error_type, "run_dir": record.run_dir,
    }  # fmt: skip
    # Every other scalar metric follows, so a custom experiment's numbers land in the table too.
    row.update({k: v for k, v in sorted(metrics.items()) if k not in row and _scalar(v)})
    return {k: _clean(v) for k, v in row.items()}


def _checkpoint(cell: Cell) -> dict[str, Any]:
    return {} if cell.checkpoint is None else {"checkpoint": cell.checkpoint, "step": cell.step}


def error_rows(sweep_id: str, records: dict[str, CellRecord]) -> list[dict[str, Any]]:
    return [
        {
            "sweep_id": sweep_id,
            **r.model_dump(include=set(ERROR_COLUMNS)),
            "duration_s": round(r.duration_s, 3),
        }
        for r in sorted(records.values(), key=lambda r: r.cell)
        if r.status == "error"
    ]


def write_results(
    out: Path, rows: list[dict[str, Any]], errors: list[dict[str, Any]], grid_keys: list[str]
) -> Path:
    """Write results.csv (fixed columns, checkpoint and step, part, grid values, then other metrics) and
    errors.csv atomically."""
    checkpoint = CHECKPOINT if any("checkpoint" in row for row in rows) else []
    part = [PART] if any(PART in row for row in rows) else []
    columns = [*HEAD, *checkpoint, *part, *grid_keys, *TAIL, *(k for row in rows for k in row)]
    columns = list(dict.fromkeys(columns))
    atomic_write(out / "errors.csv", _csv(ERROR_COLUMNS, errors))
    return atomic_write(out / "results.csv", _csv(columns, rows))


def read_results(path: Path) -> list[dict[str, Any]]:
    """results.csv back as rows, with numbers and booleans parsed and blanks as None."""
    with path.open(newline="") as f:
        return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def _csv(columns: list[str], rows: list[dict[str, Any]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _scalar(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


# Text whatever it looks like: a hex id can be all digits, a cell name or path a number.
TEXT_COLUMNS = {
    "sweep_id", "cell", "family_id", "run_id", "run_dir", "checkpoint", "error_type", "stage",
    PART, PART_PATTERN,
}  # fmt: skip


def _parse(key: str, value: str | None) -> Any:
    if value is None or value == "":
        return None
    if key in TEXT_COLUMNS:
        return value
    if value in ("True", "False"):
        return value == "True"
    try:
        number = float(value)
    except ValueError:
        return value
    return int(number) if number.is_integer() and "." not in value and "e" not in value.lower() else number
