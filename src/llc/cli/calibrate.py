"""`llc calibrate`: a grid of step size × nβ (× γ) with short chains as one sweep, then a figure and
recommended.yaml (docs/calibration.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
        MAX_STEPS,
        STEP_SIZES,
        draw_calibration,
        step_schedule,
        write_recommendation,
    )
    from llc.sweeps.results import read_results

    if sampler not in STEP_SIZES:
        err.print(
            f"[red]error:[/red] calibrate tunes sgld or sghmc (hmc and mclmc tune themselves), got {sampler}"
        )
        raise typer.Exit(2)
    try:
        overrides = parse_pairs(set_, "--set", "problem=rrr")
        studies = [
            _study(
                sampler, {**overrides, "steps": steps}, preset, step_sizes, nbetas, gammas, backend, runs_dir
            )
            for steps in step_schedule(overrides.get("steps"))
        ]
    except (ConfigError, ValueError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    for study, prepared in studies:
        steps = study["base"]["steps"]
        results, rec = _calibrate(study, prepared)
        if rec.overrides:
            break
        if study is not studies[-1][0]:
            err.print(f"no recommendation with {steps} steps per chain ({rec.reason}); trying longer chains")
    figure = draw_calibration(read_results(results), list(study["grid"]), results.parent / "calibration.png")
    written = write_recommendation(results.parent, sampler, preset, rec)
    err.print(f"recommendation: {rec.reason}")
    typer.echo(str(figure))
    typer.echo(str(written))
    if not rec.overrides:
        longest = "" if "steps" in overrides else f" (chains of up to {MAX_STEPS} steps were tried)"
        err.print(f"[red]error:[/red] no recommendation{longest}: raise --set steps=N, or widen --step-sizes")
        raise typer.Exit(1)


def _study(
    sampler: str,
    overrides: dict[str, Any],
    preset: str | None,
    step_sizes: str | None,
    nbetas: str | None,
    gammas: str | None,
    backend: str | None,
    runs_dir: Path | None,
) -> tuple[dict[str, Any], Any]:
    """The calibration's study and its prepared sweep: a bad setting is reported here, before a Prefect
    server starts, and the flow runs this prepared sweep."""
    from llc.sweeps.calibrate import STEP_SIZES, calibration_study
    from llc.sweeps.options import prepare, sweep_options

    study = calibration_study(
        sampler,
        overrides,
        preset,
        _floats(step_sizes) or STEP_SIZES[sampler],
        _floats(nbetas),
        _floats(gammas),
    )
    return study, prepare(sweep_options(study=study, backend=backend, runs_dir=runs_dir))


def _calibrate(study: dict[str, Any], prepared: Any) -> tuple[Path, Any]:
    """Run the calibration sweep on the Prefect API a sweep uses (the local server without one); its
    results table and the recommendation read from it."""
    from llc.launch.sweep import ServerUnavailable, prefect_api
    from llc.sweeps.calibrate import recommend
    from llc.sweeps.flow import run_prepared
    from llc.sweeps.results import read_results

    try:
        with prefect_api():
            state = run_prepared(prepared)
    except ServerUnavailable as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from None
    if not state.is_completed():
        err.print(f"[red]error:[/red] the calibration sweep could not run: {state.message}")
        raise typer.Exit(1)
    results = Path(state.result()["results"])
    return results, recommend(read_results(results), list(study["grid"]))
