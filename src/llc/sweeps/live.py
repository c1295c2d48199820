"""A running sweep, seen from another shell: `live.json` in the sweep's folder while its flow runs (the
flow's process, every cell and how far each has got), removed when the flow ends.

`llc sweep status` reads it to show a live sweep's finished and pending cells; `llc sweep cancel` stops
the sweep through it: SIGTERM to the flow's process, which then does what Ctrl-C does (the backend's
work is cancelled, cells not yet finished end `cancelled`, the flow ends Cancelled, every finished result
is kept). A file left by a flow that was killed names a process that is gone, and is ignored.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from llc.rundir import atomic_write

LIVE_FILE = "live.json"
EVERY_S = 1.0  # at most one write a second (a sweep of thousands of cells finishes many at once)


@contextlib.contextmanager
def running(out: Path, cells: list[str]) -> Iterator[Callable[[str, str], None]]:
    """While inside, `live.json` says this process runs the sweep; the callable records a cell's end."""
    path = out / LIVE_FILE
    state: dict[str, Any] = {
        "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "cells": cells, "ended": {},
    }  # fmt: skip
    written = 0.0

    def write() -> None:
        nonlocal written
        atomic_write(path, json.dumps(state).encode())
        written = time.monotonic()

    def ended(cell: str, status: str) -> None:
        state["ended"][cell] = status
        if time.monotonic() - written >= EVERY_S or len(state["ended"]) == len(cells):
            write()

    write()
    try:
        yield ended
    finally:
        path.unlink(missing_ok=True)


def read(out: Path) -> dict[str, Any] | None:
    """The state of the sweep whose flow runs now on this machine; None when none does."""
    try:
        state = json.loads((out / LIVE_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(state, dict) or state.get("host") != socket.gethostname():
        return None
    return state if alive(int(state.get("pid", 0))) else None


def stop(out: Path) -> int | None:
    """Ask the running sweep's flow to stop (SIGTERM, as Ctrl-C); its pid, or None when none runs."""
    state = read(out)
    if state is None:
        return None
    os.kill(int(state["pid"]), signal.SIGTERM)
    return int(state["pid"])


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, our own child that exited, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    return True
