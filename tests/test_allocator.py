"""glibc's malloc tuning: applied on glibc, without forking a child (a SLURM node polling RSS counts a
forked child as a second copy of the job and kills it at its memory limit)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from llc.allocator import keep_freed_memory


def test_malloc_tuning_applies_on_glibc_and_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"keep_freed_memory started a process: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    applied = keep_freed_memory.__wrapped__()  # the uncached call
    assert applied == (platform.libc_ver()[0] == "glibc")
