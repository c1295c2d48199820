"""Uploads that failed, one JSON file each under runs/.pending/, until `llc sync` or a later sweep succeeds.

The local copy is the truth; an entry only says "this still has to go to the bucket".
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from llc.rundir import atomic_write

PENDING = ".pending"
Kind = Literal["run", "sweep"]


@dataclass(frozen=True)
class PendingUpload:
    kind: Kind
    name: str  # a run_id or a sweep_id
    error: str
    since: float

    def path(self, runs_dir: Path) -> Path:
        return runs_dir / PENDING / f"{self.kind}-{self.name}.json"

    def local(self, runs_dir: Path) -> Path:
        """The directory to upload."""
        return runs_dir / self.name if self.kind == "run" else runs_dir / "sweeps" / self.name


def record(runs_dir: Path, kind: Kind, name: str, exc: BaseException) -> PendingUpload:
    """Remember a failed upload (the first failure's time is kept)."""
    since = next((p.since for p in pending(runs_dir) if (p.kind, p.name) == (kind, name)), time.time())
    entry = PendingUpload(kind, name, f"{type(exc).__name__}: {exc}"[:500], since)
    atomic_write(entry.path(runs_dir), json.dumps(asdict(entry), indent=2).encode())
    return entry


def clear(runs_dir: Path, kind: Kind, name: str) -> None:
    (runs_dir / PENDING / f"{kind}-{name}.json").unlink(missing_ok=True)


def pending(runs_dir: Path) -> list[PendingUpload]:
    """Every pending upload, oldest first; unreadable entries are skipped."""
    entries = []
    for path in sorted((runs_dir / PENDING).glob("*.json")):
        try:
            entries.append(PendingUpload(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(entries, key=lambda e: e.since)
