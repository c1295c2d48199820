"""The `llc` command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from llc.config import PRESETS, ConfigError, RunConfig, build_config
from llc.settings import load_settings

app = typer.Typer(
    help="Estimate local learning coefficients and run sweeps of experiments.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
err = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE config override (VALUE is YAML: --set widths=[4,3,3,4])"),
]
PresetOption = Annotated[str | None, typer.Option(help=f"preset: {' | '.join(PRESETS)}")]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE strings to a dict, VALUE parsed as YAML; a malformed pair is a ConfigError."""
    overrides: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set chains=16")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {pair!r}: VALUE is not valid YAML ({exc})") from None
    return overrides


def _config(
    preset: str | None, sampler: str | None, pairs: list[str] | None, gpu_mode: str | None
) -> RunConfig:
    try:
        overrides = parse_overrides(pairs)
        if sampler is not None:
            overrides["sampler"] = sampler
        if gpu_mode is not None:
            overrides["gpu_mode"] = gpu_mode
        return build_config(preset, overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command()
def run(
    sampler: Annotated[str, typer.Option(help="sgld | sghmc | hmc | mclmc")],
    preset: PresetOption = "quick",
    set_: SetOption = None,
    runs_dir: Annotated[Path | None, typer.Option(help="where run directories go (env LLC_RUNS_DIR)")] = None,
    gpu_mode: Annotated[str | None, typer.Option(help="vectorized | sequential | off")] = None,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="reuse an existing complete run")] = True,
) -> None:
    """Estimate the LLC with one sampler; prints the run directory."""
    from llc.experiment import run_llc

    config = _config(preset, sampler, set_, gpu_mode)
    root = runs_dir or load_settings().runs_dir
    columns = (
        TextColumn(f"{config.sampler} {config.run_id}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("sampling", total=config.warmup + config.steps)
        result = run_llc(
            config, root, skip, lambda done, total: bar.update(task, completed=done, total=total)
        )
    m = result.metrics
    note = " (cached)" if result.cached else ""
    err.print(
        f"llc = {_fmt(m.get('llc_mean'))} ± {_fmt(m.get('llc_se'))}  ess_bulk={_fmt(m.get('ess_bulk'))}  "
        f"r_hat={_fmt(m.get('r_hat'))}  diverged={m.get('chains_diverged')}{note}"
    )
    typer.echo(str(result.path))


@app.command()
def analyze(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Redraw the plots of a run from its saved trace."""
    import arviz as az

    from llc import plots

    traces = sorted(run_dir.glob("*.nc"))
    if not traces:
        err.print(f"[red]error:[/red] no trace (*.nc) in {run_dir}; is it a run directory?")
        raise typer.Exit(2)
    metrics = (
        json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    )
    written = plots.draw_plots(az.from_netcdf(traces[0]), run_dir, metrics.get("llc_true"))
    for path in written:
        typer.echo(str(path))


@config_app.command("show")
def config_show(
    preset: PresetOption = "quick",
    sampler: Annotated[str | None, typer.Option(help="sgld | sghmc | hmc | mclmc")] = None,
    set_: SetOption = None,
) -> None:
    """Print the resolved configuration (every default explicit) with its run_id and family_id."""
    config = _config(preset, sampler, set_, None)
    typer.echo(
        yaml.safe_dump(
            {"run_id": config.run_id, "family_id": config.family_id, **config.normalized()}, sort_keys=False
        )
    )


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
