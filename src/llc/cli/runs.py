"""`llc pull-runs` and `llc runs ls | rm`: the local run directories, and those kept on the Modal runs volume
(or in S3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.console import Console

from llc.settings import load_settings

runs_app = typer.Typer(
    help="Run directories: local (ls), on the Modal runs volume (ls --modal, rm).", no_args_is_help=True
)
err = Console(stderr=True, soft_wrap=True)  # a message stays one line, whatever the width

VolumeOption = Annotated[
    str | None, typer.Option("--volume", help="runs volume (env LLC_MODAL_RUNS_VOLUME, default llc-runs)")
]


def register(app: typer.Typer) -> None:
    """Add `pull-runs` and `runs` to the `llc` command line."""
    app.command("pull-runs")(pull_runs)
    app.add_typer(runs_app, name="runs")


def pull_runs(
    run_ids: Annotated[list[str] | None, typer.Argument(help="run ids to fetch")] = None,
    latest: Annotated[bool, typer.Option("--latest", help="the most recent sealed run")] = False,
    source: Annotated[
        Literal["volume", "s3"], typer.Option("--from", help="where the runs are kept: volume | s3")
    ] = "volume",
    runs_dir: Annotated[Path | None, typer.Option(help="where run directories go (env LLC_RUNS_DIR)")] = None,
    volume: VolumeOption = None,
) -> None:
    """Copy run directories into the local runs directory (sealed, or not at all); prints their paths."""
    if bool(run_ids) == latest:
        err.print("[red]error:[/red] name RUN_IDs or pass --latest (not both)")
        raise typer.Exit(2)
    root = runs_dir or load_settings().runs_dir
    if source == "s3":
        try:
            from llc.storage.pull import pull_runs as pull_from_s3
        except ImportError as exc:
            err.print(f"[red]error:[/red] S3 storage is not available ({exc}): pip install 'llc[s3]'")
            raise typer.Exit(2) from None
        try:
            paths = pull_from_s3(run_ids or [], latest, root)
        except (RuntimeError, FileNotFoundError, ValueError) as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        for path in paths:
            typer.echo(str(path))
        return
    from llc.backends.modal.volume import pull_run, select_runs

    with _volume(volume) as opened:
        for run in select_runs(opened, run_ids or [], latest):
            typer.echo(str(pull_run(opened, run.run_id, root)))


@runs_app.command("ls")
def runs_ls(
    modal: Annotated[bool, typer.Option("--modal", help="list the Modal runs volume instead")] = False,
    runs_dir: Annotated[Path | None, typer.Option(help="the local runs directory (env LLC_RUNS_DIR)")] = None,
    volume: VolumeOption = None,
) -> None:
    """List run directories, oldest first: the local runs directory, or the Modal volume with --modal."""
    if not modal:
        _local_ls(runs_dir or load_settings().runs_dir)
        return
    from llc.backends.modal.volume import list_runs

    with _volume(volume) as opened:
        runs = list_runs(opened)
    if not runs:
        err.print("no run directories on the volume")
        return
    typer.echo(f"{'run_id':<18} {'state':<9} {'files':>5} {'size':>9}  modified")
    for run in runs:
        state = "sealed" if run.complete else "partial"
        modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.mtime))
        typer.echo(f"{run.run_id:<18} {state:<9} {len(run.files):>5} {_size(run.size):>9}  {modified}")


def _local_ls(root: Path) -> None:
    """The run directories under `root` (those with a config.json): state, sampler, estimate, trust."""
    from llc.rundir import MANIFEST, RunDir

    runs = sorted(
        (p for p in Path(root).glob("*/config.json") if p.parent.name != "sweeps"),
        key=lambda p: p.parent.stat().st_mtime,
    )
    if not runs:
        err.print(f"no run directories in {root} (another folder: --runs-dir; the Modal volume: --modal)")
        return
    typer.echo(f"{'run_id':<18} {'state':<9} {'sampler':<7} {'llc':>10} {'trusted':<8} modified")
    for config in runs:
        run = RunDir(config.parent.parent, config.parent.name)
        state = "sealed" if (run.path / MANIFEST).exists() else "partial"
        sampler = _read(run, "config.json").get("sampler", "?")
        metrics = _read(run, "metrics.json")
        llc = metrics.get("llc_mean")
        shown = f"{llc:.4g}" if isinstance(llc, int | float) else "-"
        trusted = {True: "yes", False: "no"}.get(metrics.get("trusted"), "-")
        modified = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(run.path.stat().st_mtime))
        typer.echo(f"{run.run_id:<18} {state:<9} {sampler:<7} {shown:>10} {trusted:<8} {modified}")


def _read(run: Any, name: str) -> dict[str, Any]:
    try:
        data = run.read_json(name)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@runs_app.command("rm")
def runs_rm(
    run_ids: Annotated[list[str], typer.Argument(help="run ids to delete from the volume")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="show what would go, delete nothing")] = False,
    volume: VolumeOption = None,
) -> None:
    """Delete run directories from the volume: the only way anything there is ever deleted."""
    from llc.backends.modal.volume import remove_runs, select_runs

    with _volume(volume) as opened:
        runs = select_runs(opened, run_ids, latest=False)
        paths = remove_runs(opened, runs, dry_run)
    for path in paths:
        typer.echo(f"{'would delete' if dry_run else 'deleted'} {path}")
    err.print(f"{len(runs)} run(s), {len(paths)} file(s) {'would be ' if dry_run else ''}deleted")


@contextmanager
def _volume(name: str | None) -> Iterator[Any]:
    """The runs volume; Modal's refusals and unknown run ids exit 2 with what to do."""
    import modal.exception as modal_errors

    from llc.backends.modal.client import connect, refusal
    from llc.backends.modal.volume import RunNotOnVolume
    from llc.settings import ModalOptions

    options = ModalOptions(**({"runs_volume": name} if name else {}))
    try:
        yield connect(options).volume(options.runs_volume)
    except RunNotOnVolume as exc:
        err.print(f"[red]error:[/red] {exc} (see `llc runs ls`)")
        raise typer.Exit(2) from None
    except modal_errors.NotFoundError as exc:
        err.print(
            f"[red]error:[/red] no Modal volume {options.runs_volume!r} ({exc}): nothing ran on Modal yet, "
            "or LLC_MODAL_RUNS_VOLUME names another"
        )
        raise typer.Exit(2) from None
    except modal_errors.Error as exc:
        why = refusal(exc)
        err.print(f"[red]error:[/red] {why[1] if why else f'{type(exc).__name__}: {exc}'}")
        raise typer.Exit(2) from None


def _size(size: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    step = 0
    while size >= 1024 and step < len(units) - 1:
        size, step = size / 1024, step + 1
    return f"{size:.0f} B" if step == 0 else f"{size:.1f} {units[step]}"
