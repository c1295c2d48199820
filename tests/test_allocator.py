"""glibc's malloc tuning: applied on glibc, without forking a child (a SLURM node polling RSS counts a
forked child as a second copy of the job and kills it at its memory limit)."""

from __future__ import annotations

import platform
import subprocess

import pytest

from llc.run.allocator import keep_freed_memory


def test_malloc_tuning_applies_on_glibc_and_starts_no_process(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"keep_freed_memory started a process: {args}")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    applied = keep_freed_memory.__wrapped__()  # the uncached call
    assert applied == (platform.libc_ver()[0] == "glibc")


WRITE_TRACE = """
import subprocess, sys, tempfile
from pathlib import Path
import numpy as np, arviz as az
from llc.run import allocator
from llc.run import diagnostics
if sys.argv[1] == "asked":
    allocator.ask_platform_now()
def forbidden(*args, **kwargs):
    raise AssertionError(f"forked {args[1] if len(args) > 1 else kwargs.get('args')}")
subprocess.Popen.__init__ = forbidden
with tempfile.TemporaryDirectory() as d:
    diagnostics.write_netcdf(az.from_dict(posterior={"llc": np.zeros((2, 5))}), Path(d) / "t.nc")
"""


@pytest.mark.parametrize("asked", [True, False])
def test_writing_the_trace_forks_nothing_once_the_platform_was_asked(asked: bool) -> None:
    """The netCDF backend's import asks for the processor's name, which forks `uname -p` unless it was
    asked (and cached) before: a run asks at its start, while the process is small. In a fresh process."""
    import sys

    result = subprocess.run(
        [sys.executable, "-c", WRITE_TRACE, "asked" if asked else "not"], capture_output=True, text=True
    )
    assert (result.returncode == 0) == asked, result.stderr[-2000:]
    if not asked:
        assert "forked ['uname', '-p']" in result.stderr
