"""Starting a sweep from a shell (`llc sweep`, `python flows/sweep.py`): check, connect, run, report.

Everything a user can get wrong is checked before Prefect is touched, so a bad input costs a second and
one line (exit 2). Then the sweep runs on the configured Prefect API, or on the local server (started
once, reused after). Ctrl-C stops the sweep within seconds: running cells are cancelled, finished
results are kept, results.csv lists the rest as cancelled, and the exit code is 130.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING

from llc.errors import ConfigError
from llc.settings import load_settings
from llc.sweeps import interrupt

if TYPE_CHECKING:
    from llc.sweeps.options import Sweep, SweepOptions

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def check(options: SweepOptions) -> Sweep:
    """Everything about the sweep that can be checked without Prefect, on the sweep prepared once (planned
    and resolved) for the flow to run; a ConfigError says what to fix."""
    from llc.launch.preflight import check_devices, check_runs_dir
    from llc.sweeps.options import prepare

    sweep = prepare(options)
    if sweep.settings.backend == "local":
        check_devices(str(cell.config.get("device", "auto")) for cell in sweep.plan.cells)
    check_runs_dir(sweep.settings.runs_dir)
    return sweep


def run_sweep(options: SweepOptions) -> int:
    """Check, run and report a sweep; returns the exit code (0 ok, 1 failed, 2 bad input, 130 interrupted)."""
    try:
        prepared = check(options)
    except ConfigError as exc:
        return _error(str(exc), EXIT_USAGE)
    interrupt.reset()
    try:
        with prefect_api(), interrupt.on_signals():  # a Ctrl-C while the server starts just leaves
            from llc.sweeps.flow import run_prepared

            state = run_prepared(prepared)
    except KeyboardInterrupt:  # before the sweep began (or after it ended): nothing to keep
        return _error("interrupted", interrupt.EXIT_INTERRUPTED)
    except ServerUnavailable as exc:
        return _error(str(exc), EXIT_FAILED)
    result = state.result(raise_on_failure=False) if state.is_completed() or state.is_cancelled() else None
    if not isinstance(result, dict):
        return _error(f"the sweep could not run: {state.message}", EXIT_FAILED)
    counts = f"{result['total']} cells: {result['ok']} ok, {result['failed']} failed, "
    counts += f"{result['cached']} cached"
    if result.get("cancelled"):
        counts += f", {result['cancelled']} cancelled"
    failures = f" (failures: {result['errors']})" if result["failed"] else ""
    _say(f"{counts}\nresults: {result['results']}{failures}")
    if state.is_cancelled():
        _say(f"interrupted: {state.message}")
        print(result["results"])
        return interrupt.EXIT_INTERRUPTED
    _say(f"summary: llc sweep status {result['sweep_id']}; figures: llc plot-sweep {result['sweep_id']}")
    print(result["results"])
    return EXIT_OK


class ServerUnavailable(RuntimeError):
    """No Prefect API is configured and the local server could not start."""


@contextlib.contextmanager
def prefect_api() -> Iterator[None]:
    """The configured Prefect API (PREFECT_API_URL, from the environment or a profile), else the local
    server's, for everything inside."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    from llc.launch import local_server

    if get_current_settings().api.url:
        yield
        return
    try:
        server = local_server.ensure(timeout_s=load_settings().server_start_timeout_s, announce=_say)
    except local_server.ServerError as exc:
        raise ServerUnavailable(str(exc)) from None
    with temporary_settings(updates={PREFECT_API_URL: server.url}):
        yield


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _error(message: str, code: int) -> int:
    _say(f"error: {message}")
    return code
