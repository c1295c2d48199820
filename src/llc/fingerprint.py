"""A fingerprint of the code that computes results, so a code change never reuses an old result."""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import version
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
# Files that only move or present results: editing them does not change what a run computes.
_PRESENTATION = {"cli.py", "cli_runs.py", "cli_storage.py", "plots.py", "settings.py", "tracking.py"}
_PRESENTATION.add("modal_app.py")  # the Modal app only runs cells elsewhere, like the backends
_PRESENTATION_DIRS = {"backends", "sweeps", "storage"}


@functools.cache
def code_fingerprint() -> str:
    """Hash of the package's computing sources and the torch version."""
    digest = hashlib.sha256(version("torch").encode())  # without importing torch (seconds)
    for path in sorted(_PACKAGE.rglob("*.py")):
        rel = path.relative_to(_PACKAGE)
        if rel.name in _PRESENTATION or (rel.parts[0] in _PRESENTATION_DIRS):
            continue
        digest.update(str(rel).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
