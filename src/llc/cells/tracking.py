"""W&B tracking of a computed cell, where the cell ran: config, final metrics and the per-draw LLC trace.

One W&B run per cell: group = sweep id, job type = sampler, name = cell name. wandb is imported only
when a cell is tracked. Tracking never fails a cell: a failure comes back as a warning.
The API key is read by wandb itself from WANDB_API_KEY; `export_api_key` fills that from a Prefect
Secret block on the flow side, so the key never enters a cell, a config or a log.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

from llc.cells.cell import Cell
from llc.settings import Settings

log = logging.getLogger(__name__)
API_KEY = "WANDB_API_KEY"


def export_api_key(settings: Settings, mode: str) -> None:
    """Online tracking without WANDB_API_KEY: load the key from the Secret block into this process's
    environment, which the backends' workers inherit."""
    if mode != "online" or os.environ.get(API_KEY) or not settings.wandb_api_key_block:
        return
    from prefect.blocks.system import Secret

    os.environ[API_KEY] = str(Secret.load(settings.wandb_api_key_block, _sync=True).get())  # type: ignore[call-arg]


def track(cell: Cell, run_dir: Path, metrics: dict[str, Any], settings: Settings) -> str | None:
    """Log the cell to W&B unless its mode is disabled; a warning (redacted) if that failed, else None."""
    if cell.wandb_mode == "disabled":
        return None
    try:
        _log_run(cell, run_dir, metrics, settings)
    except Exception as exc:
        warning = redact(f"W&B tracking failed: {type(exc).__name__}: {exc}")
        log.warning("%s: %s", cell.name, warning)
        return warning
    return None


def _log_run(cell: Cell, run_dir: Path, metrics: dict[str, Any], settings: Settings) -> None:
    import wandb

    run = wandb.init(
        mode=cell.wandb_mode,
        project=settings.wandb_project,
        entity=settings.wandb_entity,
        group=cell.sweep_id,
        job_type=cell.sampler or cell.experiment,
        name=cell.name,
        # Offline runs land beside the run directories unless WANDB_DIR says otherwise.
        dir=None if os.environ.get("WANDB_DIR") else str(run_dir.parent),
        config=run_config(cell),
        reinit="create_new",
        # The worker's stdout may be a protocol channel: no console capture, no banners.
        settings=wandb.Settings(console="off", silent=True, save_code=False, disable_git=True),
    )
    try:
        for step, values in enumerate(llc_trace(cell, run_dir)):
            run.log(values, step=step)
        run.summary.update({k: v for k, v in metrics.items() if _scalar(v)})
    finally:
        run.finish()


def run_config(cell: Cell) -> dict[str, Any]:
    """What identifies the cell: its config and its place in the sweep."""
    return {
        **cell.config,
        **cell.grid,
        "cell": cell.name, "problem": cell.problem, "sampler": cell.sampler, "seed": cell.seed,
        "run_id": cell.run_id, "family_id": cell.family_id, "sweep_id": cell.sweep_id,
        "experiment": cell.experiment,
    }  # fmt: skip


def llc_trace(cell: Cell, run_dir: Path) -> list[dict[str, float]]:
    """Per draw: the LLC and loss averaged over the chains that stayed finite; empty for other experiments."""
    path = run_dir / f"{cell.config.get('sampler')}.nc"
    if not path.exists():
        return []
    import arviz as az

    from llc.run import diagnostics

    posterior = az.from_netcdf(path).posterior
    llc, loss = posterior["llc"].values, posterior["loss"].values
    chains = diagnostics.finite_chains(llc)
    if chains.size == 0:
        return []
    mean_llc, mean_loss = llc[chains].mean(axis=0), loss[chains].mean(axis=0)
    return [{"llc": float(a), "loss": float(b)} for a, b in zip(mean_llc, mean_loss, strict=True)]


def redact(text: str) -> str:
    """`text` with the W&B key and the AWS secret key, where set, replaced by ***."""
    for name in (API_KEY, "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(name)
        if secret:
            text = text.replace(secret, "***")
    return text


def _scalar(value: Any) -> bool:
    return isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value))
