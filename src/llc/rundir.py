"""A run directory runs/<run_id>/: written atomically, sealed by a manifest of checksums.

config.json is written first; the manifest (complete.json) last. A directory without a valid
manifest, or whose files no longer match it, is not a result and is computed again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "complete.json"
# Sampling progress of an interrupted computation; kept by prepare() so the next attempt resumes.
CHECKPOINT = ".checkpoint.pt"


class RunDir:
    def __init__(self, root: Path, run_id: str) -> None:
        self.run_id = run_id
        self.path = Path(root) / run_id

    def prepare(self) -> Path:
        """An empty directory for a fresh computation: the manifest goes first, then stale files."""
        self.path.mkdir(parents=True, exist_ok=True)
        (self.path / MANIFEST).unlink(missing_ok=True)
        for stale in self.path.iterdir():
            if stale.name == CHECKPOINT:
                continue
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
        return self.path

    def write_json(self, name: str, data: Any) -> Path:
        return atomic_write(
            self.path / name, json.dumps(data, indent=2, sort_keys=True, default=_jsonable).encode()
        )

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    def seal(self) -> None:
        """Record a checksum of every file; from now on the directory is a complete result."""
        self.checkpoint.unlink(missing_ok=True)
        files = {
            p.relative_to(self.path).as_posix(): _sha256(p)
            for p in sorted(self.path.rglob("*"))
            # Plots are presentation: `llc analyze` may redraw them without breaking the seal.
            if p.is_file() and p.name != MANIFEST and not p.name.startswith(".") and p.suffix != ".png"
        }
        self.write_json(MANIFEST, {"run_id": self.run_id, "files": files})

    def is_complete(self) -> bool:
        """A sealed directory whose files all still match their checksums."""
        try:
            manifest = self.read_json(MANIFEST)
            return manifest["run_id"] == self.run_id and all(
                _sha256(self.path / name) == digest for name, digest in manifest["files"].items()
            )
        except (OSError, ValueError, KeyError, TypeError):
            return False


def atomic_write(path: Path, data: bytes) -> Path:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(Path(tmp), path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def publish(tmp: Path, path: Path) -> None:
    """Give a finished temporary file normal permissions (mkstemp makes 0600) and rename it into place."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
