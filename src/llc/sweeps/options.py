"""How a sweep runs, resolved once: flags over the study's `execution` block over LLC_* settings."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from llc.settings import Settings
from llc.sweeps.study import Execution


@dataclass(frozen=True)
class SweepOptions:
    backend: str
    runs_dir: Path
    max_parallel: int
    timeout_s: float
    retries: int
    retry_delay_s: float
    retry_jitter: float
    best_by: str
    progress_every_s: float
    threads_per_cell: int | None
    wandb_mode: str


def resolve_options(settings: Settings, execution: Execution, **flags: Any) -> SweepOptions:
    """Each option from the first source that sets it: a flag (not None), the study, the settings."""
    values: dict[str, Any] = {}
    for option in fields(SweepOptions):
        candidates = (
            flags.get(option.name),
            getattr(execution, option.name, None),
            getattr(settings, option.name),
        )
        values[option.name] = next((v for v in candidates if v is not None), None)
    values["runs_dir"] = Path(values["runs_dir"]).resolve()  # absolute paths in tables and links
    return SweepOptions(**values)
