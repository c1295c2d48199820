"""`llc calibrate`: a grid of step size × nβ (× γ) with short chains as one sweep, then a figure and
recommended.yaml (docs/calibration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from llc.errors import ConfigError
from llc.settings import parse_pairs

err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    """Add `calibrate` to the `llc` command line."""
    app.command("calibrate")(calibrate)


def _floats(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",")] if text else None


def calibrate(
    sampler: Annotated[str, typer.Option(help="sgld | sghmc")] = "sgld",
    preset: Annotated[str | None, typer.Option(help="preset the settings start from")] = "quick",
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="KEY=VALUE setting of every cell (YAML value)")
    ] = None,
    step_sizes: Annotated[
        str | None, typer.Option(help="comma-separated step sizes (default: seven from 1e-6, per sampler)")
    ] = None,
    nbetas: Annotated[str | None, typer.Option(help="comma-separated nβ values (default: n / log n)")] = None,
    gammas: Annotated[str | None, typer.Option(help="comma-separated γ values (default: the run's)")] = None,
    backend: Annotated[str | None, typer.Option(help="local | slurm | modal (env LLC_BACKEND)")] = None,
    runs_dir: Annotated[Path | None, typer.Option(help="where results go (env LLC_RUNS_DIR)")] = None,
) -> None:
    """Short chains over step size × nβ (× γ) as one sweep; writes calibration.png and recommended.yaml
    into the sweep's folder and prints the recommendation."""
    from llc.sweeps.calibrate import (
        STEP_SIZES,
        calibration_study,
        draw_calibration,
        recommend,
        write_recommendation,
    )
    from llc.sweeps.flow import run_prepared
    from llc.sweeps.options import prepare, sweep_options
    from llc.sweeps.results import read_results

    if sampler not in STEP_SIZES:
        err.print(
            f"[red]error:[/red] calibrate tunes sgld or sghmc (hmc and mclmc tune themselves), got {sampler}"
        )
        raise typer.Exit(2)
    try:
        study = calibration_study(
            sampler, parse_pairs(set_, "--set", "problem=rrr"), preset,
            _floats(step_sizes) or STEP_SIZES[sampler], _floats(nbetas), _floats(gammas),
        )  # fmt: skip
        # A bad setting is reported here, before a Prefect server starts; the flow runs this prepared sweep.
        prepared = prepare(sweep_options(study=study, backend=backend, runs_dir=runs_dir))
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    state = run_prepared(prepared)
    if not state.is_completed():
        err.print(f"[red]error:[/red] the calibration sweep could not run: {state.message}")
        raise typer.Exit(1)
    results = Path(state.result()["results"])
    rows = read_results(results)
    varied = list(study["grid"])
    figure = draw_calibration(rows, varied, results.parent / "calibration.png")
    rec = recommend(rows, varied)
    written = write_recommendation(results.parent, sampler, rec)
    err.print(f"recommendation: {rec.reason}")
    typer.echo(str(figure))
    typer.echo(str(written))
    if not rec.overrides:
        raise typer.Exit(1)
