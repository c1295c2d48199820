"""`llc sync`: upload what earlier runs left pending, and every sealed run the bucket lacks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llc.settings import load_settings

err = Console(stderr=True, soft_wrap=True)  # a message stays one line, whatever the width


def register(app: typer.Typer) -> None:
    app.command("sync")(sync_command)


def sync_command(
    runs_dir: Annotated[Path | None, typer.Option(help="the local runs directory (env LLC_RUNS_DIR)")] = None,
    pending_only: Annotated[
        bool, typer.Option("--pending-only", help="only what is pending; skip the scan for missing runs")
    ] = False,
) -> None:
    """Upload pending results to the S3 bucket (LLC_S3_BLOCK or LLC_S3_BUCKET); exits 1 if some remain."""
    from llc.storage import s3
    from llc.storage.sync import sync

    settings = load_settings()
    bucket = s3.open_bucket(settings)
    if bucket is None:
        err.print("[red]error:[/red] no bucket: set LLC_S3_BLOCK or LLC_S3_BUCKET (docs/storage.md)")
        raise typer.Exit(2)
    report = sync(bucket, runs_dir or settings.runs_dir, missing=not pending_only)
    typer.echo(f"{len(report.runs)} runs, {len(report.sweeps)} sweeps uploaded; {report.pending} pending")
    if report.pending:
        raise typer.Exit(1)
