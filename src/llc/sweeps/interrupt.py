"""Stopping a sweep on a signal: the first Ctrl-C (or SIGTERM) cancels the work and keeps every result.

A signal handler may run at any bytecode of the main thread, so it only sets a flag and hands the
cancelling (killing workers, `scancel`, cancelling Modal calls) to a thread. Backends register what
cancels their work; cells that have not started see `requested()` and end as `cancelled`. A second
Ctrl-C leaves at once (exit 130); workers die with their parent, cluster jobs were already cancelled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

Canceller = Callable[[str], None]

EXIT_INTERRUPTED = 130

_requested = threading.Event()
_reason = ""
_cancellers: list[Canceller] = []
_lock = threading.Lock()


def requested() -> bool:
    """Whether this process was told to stop its sweep."""
    return _requested.is_set()


def reason() -> str:
    return _reason


def request(why: str) -> None:
    """Stop the sweep: no new cell starts, and every registered canceller runs once (in a thread)."""
    global _reason
    with _lock:
        if _requested.is_set():
            return
        _reason = why
        _requested.set()
        cancellers = list(_cancellers)
    for cancel in cancellers:
        threading.Thread(target=cancel, args=(why,), name="cancel-sweep", daemon=True).start()


def reset() -> None:
    """Forget an earlier request (a new sweep in the same process)."""
    global _reason
    with _lock:
        _requested.clear()
        _reason = ""


@contextlib.contextmanager
def cancels(cancel: Canceller) -> Iterator[None]:
    """While inside, a stop request calls `cancel(reason)`; registering after a request cancels at once."""
    with _lock:
        _cancellers.append(cancel)
        late = _requested.is_set()
    if late:
        cancel(_reason)
    try:
        yield
    finally:
        with _lock, contextlib.suppress(ValueError):
            _cancellers.remove(cancel)


@contextlib.contextmanager
def on_signals() -> Iterator[None]:
    """From the main thread: SIGINT and SIGTERM request a stop; a second SIGINT exits at once (130).

    Elsewhere (a thread, a process that ignores SIGINT) it changes nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if requested() and signum == signal.SIGINT:
            _write("\ninterrupted again: leaving now\n")
            os._exit(EXIT_INTERRUPTED)
        if not requested():
            _write(f"\n{name}: stopping the sweep: running cells are cancelled, finished results are kept "
                   "(Ctrl-C again to leave at once)\n")  # fmt: skip
        request(f"the sweep was interrupted ({name})")

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) != signal.SIG_IGN:  # e.g. SIGINT of a background job (`&`)
            previous[signum] = signal.signal(signum, handle)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _write(text: str) -> None:
    """Straight to stderr's file descriptor: safe in a signal handler (no lock of sys.stderr's)."""
    with contextlib.suppress(OSError):
        os.write(2, text.encode())
