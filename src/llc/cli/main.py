"""The `llc` command line."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from llc.config import PRESETS, RunConfig, build_config, read_config_file
from llc.errors import ConfigError
from llc.samplers.registry import SAMPLERS
from llc.settings import described, load_settings, parse_pairs
from llc.sweeps import interrupt

app = typer.Typer(
    help="Estimate local learning coefficients and run sweeps of experiments.", no_args_is_help=True
)
config_app = typer.Typer(help="Inspect configurations.", no_args_is_help=True)
app.add_typer(config_app, name="config")
sweep_app = typer.Typer(help="Run a study as the Prefect flow `sweep`, or summarize a past sweep.")
app.add_typer(sweep_app, name="sweep")
err = Console(stderr=True, soft_wrap=True)
SAMPLER_CHOICES = " | ".join(SAMPLERS)  # a message stays one line, whatever the width

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="KEY=VALUE config override (VALUE is YAML: --set widths=[4,3,3,4])"),
]
PresetOption = Annotated[str | None, typer.Option(help=f"preset: {' | '.join(PRESETS)}")]
BackendOption = Annotated[str | None, typer.Option(help=described("backend"))]
BackendOptionsOption = Annotated[
    list[str] | None,
    typer.Option(
        "--backend-option",
        help="KEY=VALUE option of the backend, repeatable (VALUE is YAML): --backend-option partition=gpu",
    ),
]


RunsDirOption = Annotated[Path | None, typer.Option(help=described("runs_dir"))]


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """`--set KEY=VALUE` strings to a dict, VALUE parsed as YAML; a malformed pair is a ConfigError."""
    return parse_pairs(pairs, "--set", "chains=16")


def _backend_options(pairs: list[str] | None) -> dict[str, Any]:
    """`--backend-option KEY=VALUE` strings to a dict, VALUE parsed as YAML (`gpus=1`, `setup=[a, b]`)."""
    return parse_pairs(pairs, "--backend-option", "partition=gpu")


def _config(
    preset: str | None,
    sampler: str | None,
    pairs: list[str] | None,
    gpu_mode: str | None,
    config_file: Path | None = None,
    require_sampler: bool = False,
) -> RunConfig:
    """The run's config: a config file's keys (its `preset` replacing --preset), then --sampler, --set
    and --gpu-mode."""
    overrides = read_config_file(config_file) if config_file is not None else {}
    preset = overrides.pop("preset", preset)
    overrides.update(parse_overrides(pairs))
    if sampler is not None:
        overrides["sampler"] = sampler
    if gpu_mode is not None:
        overrides["gpu_mode"] = gpu_mode
    if require_sampler and "sampler" not in overrides:
        raise ConfigError(f"no sampler: give --sampler ({SAMPLER_CHOICES}) or a sampler in the config file")
    return build_config(preset, overrides)


ConfigFileOption = Annotated[
    Path | None,
    typer.Option("--config", help="a YAML file of keys and `preset` (llc calibrate's recommended.yaml)"),
]


@app.command()
def run(
    sampler: Annotated[str | None, typer.Option(help=SAMPLER_CHOICES)] = None,
    preset: PresetOption = "quick",
    set_: SetOption = None,
    config_file: ConfigFileOption = None,
    runs_dir: Annotated[Path | None, typer.Option(help="where run directories go (env LLC_RUNS_DIR)")] = None,
    gpu_mode: Annotated[str | None, typer.Option(help="vectorized | sequential | off")] = None,
    skip: Annotated[bool, typer.Option("--skip/--no-skip", help="reuse an existing complete run")] = True,
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
) -> None:
    """Estimate the LLC with one sampler; prints the run directory.

    Exit codes: 0 an estimate, 1 no estimate (every chain diverged, or the run failed), 2 bad input.
    """
    from llc.backends import check_backend
    from llc.launch.preflight import check_devices, check_runs_dir

    config = _config(preset, sampler, set_, gpu_mode, config_file, require_sampler=True)
    settings = load_settings()
    backend = backend or settings.backend
    check_backend(backend)  # before anything is written
    if backend == "local":
        check_devices([config.device])
    root = check_runs_dir(runs_dir or settings.runs_dir)
    if backend != "local" or backend_option:
        _run_on_backend(config, root, skip, backend, backend_option)
        return
    from llc.run.experiment import run_llc

    columns = (
        TextColumn(f"{config.sampler} {config.run_id}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=True) as bar:
        task = bar.add_task("sampling", total=config.warmup + config.initial_steps)
        result = run_llc(
            config, root, skip, lambda done, total: bar.update(task, completed=done, total=total)
        )
    m = result.metrics
    note = " (cached)" if result.cached else ""
    if len(m.get("parts") or {}) > 1:
        err.print(
            f"llc of {len(m['parts'])} parts, {sum(p['trusted'] for p in m['parts'].values())} trusted{note}:"
        )
    else:
        err.print(
            f"llc = {_fmt(m.get('llc_mean'))} ± {_fmt(m.get('llc_se'))}  ess_bulk={_fmt(m.get('ess_bulk'))}  "
            f"r_hat={_fmt(m.get('r_hat'))}  diverged={m.get('chains_diverged')}{note}"
        )
    typer.echo(str(result.path))
    _report_flags(m)
    if m.get("llc_mean") is None and not _report_parts(m):
        err.print(f"[red]error:[/red] {_no_estimate(config, m)}")
        raise typer.Exit(1)


def _no_estimate(config: RunConfig, metrics: dict[str, Any]) -> str:
    """What to change when no chain is left to estimate from."""
    step = metrics.get("step_size_auto") or config.resolved_step_size
    gamma = float(metrics.get("gamma_auto") or config.gamma)
    return (
        f"no estimate: {metrics.get('chains_diverged')} of {config.chains} chains diverged "
        f"at step_size={step:g}; "
        f"try a smaller step size (--set step_size={step / 10:g}) or a stronger localization "
        f"(--set gamma={gamma * 10:g}), or let the step be set from the curvature "
        "(--set step_size=auto, sgld and sghmc)"
    )


def _run_on_backend(config: RunConfig, root: Path, skip: bool, backend: str, pairs: list[str] | None) -> None:
    """`llc run` as one cell on a backend (a SLURM job, a Modal call); exits 1 with its error row."""
    from llc.backends import BackendUnavailable, get_backend, run_on
    from llc.cells.cell import lone_cell
    from llc.rundir import RunDir

    settings = load_settings()
    cell = lone_cell(config)
    try:
        opened = get_backend(backend, 1, _backend_options(pairs))
    except (ValueError, BackendUnavailable) as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    err.print(f"{config.sampler} {config.run_id}: running on the {backend} backend")
    try:
        with interrupt.on_signals(), opened, interrupt.cancels(opened.cancel_all):
            record = run_on(opened, cell, root.resolve(), skip, settings.timeout_s)
    except Exception as exc:  # refused before it ran (sbatch, an unreachable service): no record
        if interrupt.requested():
            err.print("interrupted: the job was cancelled")
            raise typer.Exit(interrupt.EXIT_INTERRUPTED) from None
        err.print(f"[red]error:[/red] {type(exc).__name__}: {exc}")
        raise typer.Exit(1) from None
    if record.status != "ok":
        err.print(f"[red]error:[/red] {record.error_type}: {record.error} (stage {record.stage})")
        for line in record.traceback.splitlines()[-5:] if record.traceback else []:
            err.print(f"  {line}")
        raise typer.Exit(1)
    m = record.metrics
    note = " (cached)" if record.cached else ""
    err.print(f"llc = {_fmt(m.get('llc_mean'))} ± {_fmt(m.get('llc_se'))}{note}")
    typer.echo(str(RunDir(root, config.run_id).path))
    _report_flags(m)
    if m.get("llc_mean") is None and not _report_parts(m):
        err.print(f"[red]error:[/red] {_no_estimate(config, m)}")
        raise typer.Exit(1)


def _report_parts(metrics: dict[str, Any]) -> bool:
    """A run of several parts (restrict): one line per part; whether there were several."""
    parts = metrics.get("parts") or {}
    for name, m in parts.items() if len(parts) > 1 else ():
        trust = "trusted" if m.get("trusted") else f"untrusted: {', '.join(m.get('flags', []))}"
        err.print(f"  {name}: llc = {_fmt(m.get('llc_mean'))} ± {_fmt(m.get('llc_se'))}  ({trust})")
        _report_flags(m, indent="    ")
    return len(parts) > 1


def _report_flags(metrics: dict[str, Any], indent: str = "") -> None:
    """Say why a run is not to be trusted (docs/diagnostics.md#flags-runs-that-cannot-be-trusted); a run
    of several parts says it under each part's line (_report_parts)."""
    if metrics.get("llc_note"):
        err.print(f"{indent}note: {metrics['llc_note']}")
    if len(metrics.get("parts") or {}) > 1:
        return
    for name, reason in zip(metrics.get("flags", []), metrics.get("flag_reasons", []), strict=True):
        err.print(f"{indent}[yellow]untrusted ({name}):[/yellow] {reason}")


@app.command()
def analyze(run_dir: Annotated[Path, typer.Argument(help="a run directory")]) -> None:
    """Redraw the plots of a run from its saved trace."""
    import arviz as az

    from llc.run import plots

    traces = sorted(run_dir.glob("*.nc"))
    if not traces:
        err.print(f"[red]error:[/red] no trace (*.nc) in {run_dir}; is it a run directory?")
        raise typer.Exit(2)
    metrics = (
        json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").exists() else {}
    )
    written = plots.draw_plots(
        az.from_netcdf(traces[0]), run_dir, metrics.get("llc_true"), metrics.get("flags", [])
    )
    for path in written:
        typer.echo(str(path))


@config_app.command("show")
def config_show(
    preset: PresetOption = "quick",
    sampler: Annotated[str | None, typer.Option(help=SAMPLER_CHOICES)] = None,
    set_: SetOption = None,
    config_file: ConfigFileOption = None,
) -> None:
    """Print the resolved configuration (every default explicit) with its run_id and family_id."""
    config = _config(preset, sampler, set_, None, config_file)
    typer.echo(
        yaml.safe_dump(
            {"run_id": config.run_id, "family_id": config.family_id, **config.normalized()}, sort_keys=False
        )
    )


StudyOption = Annotated[Path | None, typer.Option(help=described("study"))]
SkipOption = Annotated[bool, typer.Option("--skip/--no-skip", help="reuse complete results of cells")]
MaxParallelOption = Annotated[int | None, typer.Option(help=described("max_parallel"))]
TimeoutOption = Annotated[float | None, typer.Option(help=described("timeout_s"))]
RetriesOption = Annotated[int | None, typer.Option(help=described("retries"))]


@sweep_app.callback(invoke_without_command=True)
def sweep_command(
    ctx: typer.Context,
    study: StudyOption = None,
    backend: BackendOption = None,
    backend_option: BackendOptionsOption = None,
    runs_dir: RunsDirOption = None,
    skip: SkipOption = True,
    max_parallel: MaxParallelOption = None,
    timeout_s: TimeoutOption = None,
    retries: RetriesOption = None,
) -> None:
    """Run every cell of a study as the Prefect flow `sweep`; prints the path of results.csv.

    Without PREFECT_API_URL the sweep runs on the local Prefect server (started on first use, then reused: `llc server status`). Exit codes: 0 done (failed cells included), 1 the sweep could not run, 2 bad input, 130 interrupted (Ctrl-C: finished results are kept). `llc sweep status|cancel SWEEP` look at a past sweep.
    """  # noqa: E501  (one paragraph: the help text keeps a docstring's line breaks)
    if ctx.invoked_subcommand is not None:
        return
    from llc.launch.sweep import run_sweep
    from llc.sweeps.options import sweep_options

    options = sweep_options(
        study=study, backend=backend, runs_dir=runs_dir, skip=skip, max_parallel=max_parallel,
        timeout_s=timeout_s, retries=retries, backend_options=_backend_options(backend_option),
    )  # fmt: skip
    raise typer.Exit(run_sweep(options))


@sweep_app.command("status")
def sweep_status(
    sweep_id: Annotated[str, typer.Argument(help="a sweep id (or a unique prefix of one), or its directory")],
    runs_dir: RunsDirOption = None,
) -> None:
    """A sweep's state: while it runs, its finished and pending cells; then its results.csv summarized
    (counts, trust and flags, best cell, LLC by sampler, errors)."""
    from llc.sweeps import live
    from llc.sweeps.results import read_results
    from llc.sweeps.summary import summarize, to_markdown

    folder = _sweep_folder(sweep_id, runs_dir, holding=("results.csv", "study.json"))
    state = live.read(folder)
    if state is not None:
        typer.echo(_live_lines(folder.name, state))
    if (folder / "results.csv").exists():
        rows = read_results(folder / "results.csv")
        summary = summarize(rows, load_settings().best_by)
        typer.echo(to_markdown(folder.name, summary, str(folder / "results.csv")))
    elif state is None:
        err.print(f"sweep {folder.name} has no results.csv yet and is not running (it was stopped early)")


def _live_lines(name: str, state: dict[str, Any]) -> str:
    """A running sweep in a few lines: its process, finished cells by status, and the pending ones."""
    ended: dict[str, str] = state.get("ended", {})
    cells: list[str] = state.get("cells", [])
    pending = [cell for cell in cells if cell not in ended]
    by_status = ", ".join(f"{n} {s}" for s, n in sorted(Counter(ended.values()).items())) or "none yet"
    minutes = (time.time() - float(state.get("started", time.time()))) / 60
    shown = ", ".join(pending[:10]) + (f", ... ({len(pending) - 10} more)" if len(pending) > 10 else "")
    return "\n".join([
        f"sweep {name} is running (pid {state.get('pid')}, for {minutes:.1f} min): "
        f"{len(ended)} of {len(cells)} cells finished ({by_status}), {len(pending)} queued or running",
        *([f"queued or running: {shown}"] if pending else []),
        f"stop it, keeping every finished result: llc sweep cancel {name}",
        "",
    ])  # fmt: skip


@sweep_app.command("cancel")
def sweep_cancel(
    sweep_id: Annotated[str, typer.Argument(help="a sweep id (or a unique prefix of one), or its directory")],
    runs_dir: RunsDirOption = None,
) -> None:
    """Stop a sweep from any shell: a running sweep's flow stops as on Ctrl-C (its work cancelled, every
    finished result kept); the SLURM jobs and Modal calls it recorded are cancelled, e.g. after its flow
    process was killed."""
    from llc.backends import cancel_recorded
    from llc.sweeps import live
    from llc.sweeps.results import JOBS_FILE

    folder = _sweep_folder(sweep_id, runs_dir, holding=("study.json", JOBS_FILE))
    pid = live.stop(folder)
    if pid is not None:
        err.print(f"sweep {folder.name}: its flow (pid {pid}) stops now; finished results are kept")
    cancelled = cancel_recorded(folder / JOBS_FILE) if (folder / JOBS_FILE).exists() else []
    if pid is None and not (folder / JOBS_FILE).exists():
        err.print(f"sweep {folder.name} is not running: nothing to cancel")
        return
    err.print(f"{len(cancelled)} jobs of sweep {folder.name} cancelled")
    for job_id in cancelled:
        typer.echo(job_id)


@app.command("plot-sweep")
def plot_sweep(
    sweep_id: Annotated[str, typer.Argument(help="a sweep id (or a unique prefix of one), or its directory")],
    runs_dir: RunsDirOption = None,
) -> None:
    """Draw a sweep's figures (PNG) into its plots/ folder; prints their paths."""
    from llc.sweeps.plots import draw_sweep_plots
    from llc.sweeps.results import read_results

    folder = _sweep_folder(sweep_id, runs_dir)
    for path in draw_sweep_plots(read_results(folder / "results.csv"), folder / "plots"):
        typer.echo(str(path))


def _sweep_folder(sweep_id: str, runs_dir: Path | None, holding: tuple[str, ...] = ("results.csv",)) -> Path:
    """runs/sweeps/<sweep_id> (one holding any of the files `holding`), found by id, unique prefix or path;
    exits 2 naming the known sweeps."""

    def held(folder: Path) -> bool:
        return any((folder / name).exists() for name in holding)

    if held(Path(sweep_id)):
        return Path(sweep_id)
    root = (runs_dir or load_settings().runs_dir) / "sweeps"
    known = sorted(p.name for p in root.glob("*") if held(p))
    matches = [name for name in known if name == sweep_id] or [n for n in known if n.startswith(sweep_id)]
    if len(matches) != 1:
        why = "matches several sweeps" if matches else "is not a sweep"
        err.print(f"[red]error:[/red] {sweep_id!r} {why} in {root}; known: {', '.join(known) or 'none'}")
        raise typer.Exit(2)
    return root / matches[0]


def _fmt(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
