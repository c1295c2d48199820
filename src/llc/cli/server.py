"""`llc server start|status|stop`: the local Prefect server that sweeps use when no API is configured."""

from __future__ import annotations

import typer
from rich.console import Console

from llc.launch import local_server
from llc.settings import load_settings

err = Console(stderr=True, soft_wrap=True)  # a message stays one line, whatever the width


def register(app: typer.Typer) -> None:
    server_app = typer.Typer(
        help="The local Prefect server (started by the first sweep, reused by later ones).",
        no_args_is_help=True,
    )
    app.add_typer(server_app, name="server")

    @server_app.command("start")
    def start() -> None:
        """Start the local server now (sweeps start it themselves when needed); prints its UI address."""
        try:
            server = local_server.ensure(timeout_s=load_settings().server_start_timeout_s, announce=err.print)
        except local_server.ServerError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        _describe(server)

    @server_app.command("status")
    def status() -> None:
        """Whether the local server of this PREFECT_HOME runs, and where (exit 1 when it does not)."""
        server = local_server.status()
        if server is None:
            err.print(f"no local Prefect server runs for {local_server.prefect_home()}")
            raise typer.Exit(1)
        _describe(server)

    @server_app.command("stop")
    def stop() -> None:
        """Stop the local server (the next sweep starts it again); runs and results are not touched."""
        server = local_server.stop()
        err.print(f"stopped the local Prefect server (pid {server.pid})" if server else "it was not running")


def _describe(server: local_server.Server) -> None:
    err.print(f"local Prefect server: pid {server.pid}, home {server.home}, log {server.log}")
    err.print(f"UI: {server.ui}   (other tools: export PREFECT_API_URL={server.url})")
    typer.echo(server.ui)
