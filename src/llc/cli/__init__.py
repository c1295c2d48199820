"""The `llc` command: `main` holds the app and the run/config/sweep commands; each other module adds
its own group of commands to it."""

from llc.cli import calibrate, runs, server, storage
from llc.cli.main import app

for _commands in (runs, server, storage, calibrate):
    _commands.register(app)

__all__ = ["app"]
