"""A fingerprint of the code that computes results, so a code change never reuses an old result.

It is taken over an allow-list, named positively: the packages and modules that decide what a run
computes. Everything else (the CLI, the launcher, the backends, the sweeps, storage) only moves or
presents results, and editing it keeps every run_id (docs/architecture.md).
"""

from __future__ import annotations

import functools
import hashlib
from importlib.metadata import version
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
COMPUTES = ("model", "modules", "problems", "samplers", "run", "config.py")


@functools.cache
def code_fingerprint() -> str:
    """The installed package's fingerprint, taken once per process."""
    return fingerprint_of(PACKAGE)


def fingerprint_of(package: Path) -> str:
    """Hash of the computing sources (COMPUTES, under `package`) and the torch version."""
    digest = hashlib.sha256(version("torch").encode())  # without importing torch (seconds)
    for name in COMPUTES:
        root = package / name
        for path in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]
