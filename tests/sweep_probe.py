"""A tiny experiment for sweep tests (it returns at once, sleeps, raises, crashes or hangs on demand).

Every execution leaves a marker file named after its run directory, so tests count computations.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from llc.sweeps.results import read_results

PROBE = "sweep_probe:Probe"


class ProbeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seed: int = 0
    x: float = 0.0
    markers: str = ""
    sleep_s: float = 0.0
    fail: Literal["none", "oserror", "valueerror", "crash", "hang"] = "none"
    fail_times: int = 1_000_000  # executions that fail before one succeeds
    weights: str = ""  # a checkpoint: a text file `llc=<λ̂> L0=<loss>`, anything else cannot be loaded


class Probe:
    config_model = ProbeConfig

    def run(self, config: ProbeConfig, run_dir: Path) -> dict[str, Any]:
        execution = mark(config, run_dir)
        if config.fail != "none" and execution <= config.fail_times:
            if config.fail == "oserror":
                raise ConnectionError(f"flaky resource (execution {execution})")
            if config.fail == "valueerror":
                raise ValueError("bad value: not worth a retry")
            if config.fail == "crash":
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(3600)
        time.sleep(config.sleep_s)
        (run_dir / "output.txt").write_text(f"x={config.x}\n" * 100)
        return {"value": 2 * config.x, "execution": execution, **load_checkpoint(config.weights)}


def load_checkpoint(weights: str) -> dict[str, float]:
    """A probe checkpoint's numbers, reported as the LLC cell of a real checkpoint would report them."""
    if not weights:
        return {}
    fields = dict(part.split("=", 1) for part in Path(weights).read_text().split() if "=" in part)
    if set(fields) != {"llc", "L0"}:
        raise ValueError(f"cannot load checkpoint {weights}: not a probe checkpoint")
    llc = float(fields["llc"])
    return {"llc_mean": llc, "llc_se": 0.05 * llc, "L0": float(fields["L0"])}


def mark(config: ProbeConfig, run_dir: Path) -> int:
    """Leave a marker for this execution (holding the pid) and return how many this run has had."""
    if not config.markers:
        return 1
    folder = Path(config.markers)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{run_dir.name}.{uuid.uuid4().hex}").write_text(str(os.getpid()))
    return len(list(folder.glob(f"{run_dir.name}.*")))


def executions(markers: Path) -> dict[str, int]:
    """Executions per run_id so far."""
    counts: dict[str, int] = {}
    for path in markers.glob("*.*") if markers.exists() else []:
        run_id = path.name.split(".")[0]
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def pids(markers: Path) -> set[int]:
    return {int(p.read_text()) for p in markers.glob("*.*")} if markers.exists() else set()


def probe_study(markers: Path, problems: list[dict[str, Any]], **execution: Any) -> dict[str, Any]:
    """An inline study of the probe experiment; problems are {name, overrides}, each given its own x."""
    problems = [{**p, "overrides": {"x": i, **p.get("overrides", {})}} for i, p in enumerate(problems)]
    return {
        "name": "probe",
        "experiment": PROBE,
        "base": {"markers": str(markers)},
        "problems": problems,
        "seeds": [0],
        "execution": {"max_parallel": 2, "retries": 2, "retry_delay_s": 0.05, "timeout_s": 60, **execution},
    }


def rows_by_cell(results: str | Path) -> dict[str, dict[str, Any]]:
    return {row["cell"]: row for row in read_results(Path(results))}


def alive(pid: int) -> bool:
    """Running (a zombie left for a non-reaping init counts as stopped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Return once `condition()` holds; fail naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
