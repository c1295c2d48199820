"""Checks made before any work is submitted or written: each failure is a ConfigError naming the fix."""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

from llc.errors import ConfigError


def check_runs_dir(path: Path) -> Path:
    """The runs folder (not created here): a file, or a place where it cannot be written, is an error."""
    path = Path(path).expanduser()
    fix = "give --runs-dir (or LLC_RUNS_DIR) a folder you can write to"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"runs dir {path} is a file, not a folder; {fix}")
    try:  # where the first folder would be made: a probe file there, removed at once
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".llc-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot write to runs dir {path}: {exc.strerror or exc}; {fix}") from None
    return path


def check_devices(devices: Iterable[str]) -> None:
    """Every CUDA device asked for exists on this machine (torch is imported only when one is asked for)."""
    wanted = sorted({d for d in devices if d.startswith("cuda")})
    if not wanted:
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in wanted:
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA device"
            raise ConfigError(
                f"device {device} is not available: this machine has {have} "
                f"(torch {torch.__version__}); set device=cpu or device=auto, or run on a GPU backend"
            )
