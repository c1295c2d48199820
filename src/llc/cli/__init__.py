"""The `llc` command: `main` holds the app and the run/config/sweep commands; each other module adds
its own group of commands to it. Every command turns a user's mistake (a ConfigError, wherever it is
raised) into one line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import typer

from llc.cli import calibrate, runs, server, storage
from llc.cli.main import app, err
from llc.errors import ConfigError

for _commands in (runs, server, storage, calibrate):
    _commands.register(app)


def one_line(command: Callable[..., Any]) -> Callable[..., Any]:
    """The command, its ConfigError (a user's mistake, wherever raised) one line on stderr and exit 2."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None

    return run


def _guard(group: typer.Typer) -> None:
    for info in group.registered_commands:
        if info.callback is not None:
            info.callback = one_line(info.callback)
    if group.registered_callback is not None and group.registered_callback.callback is not None:
        group.registered_callback.callback = one_line(group.registered_callback.callback)
    for sub in group.registered_groups:
        if sub.typer_instance is not None:
            _guard(sub.typer_instance)


_guard(app)

__all__ = ["app", "one_line"]
