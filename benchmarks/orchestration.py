"""Orchestration overhead of the sweep flow, measured against bare Prefect in the same invocation.

1. A study of N no-op cells (an experiment that returns at once) against a bare `.map` of N no-op
   Prefect tasks; the target is a sweep at most 1.5x the bare map's time.
2. The quick study run fresh, then again fully cached; the target is a re-run at most 10% of the first.

Everything runs on one Prefect temporary server, started by a warm-up flow that is not timed. Each
time is given end to end (the flow call) and inside the flow (the bare map's `.map(...).result()`,
the sweep's `wall_s`). Before each timed flow the benchmark waits until the server has recorded
every task run of the previous one: a SQLite server still ingesting 500 task runs answers the next
flow's first requests tens of seconds late, which would charge one flow for another's backlog.
Run: `.venv/bin/python benchmarks/orchestration.py [--cells 500] [--repeat 3] [--skip-quick]`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any
from uuid import UUID

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent


class NoOpConfig(BaseModel):
    seed: int = 0


class NoOp:
    """An experiment that returns at once: what remains of a cell's time is orchestration."""

    config_model = NoOpConfig

    def run(self, config: NoOpConfig, run_dir: Path) -> dict[str, Any]:
        return {"seed": config.seed}


def settle(flow_run_id: UUID, task_runs: int, timeout_s: float = 300) -> None:
    """Wait until the server has recorded every task run of a flow run in its final state."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters
    from prefect.client.schemas.objects import StateType

    flows = filters.FlowRunFilter(id=filters.FlowRunFilterId(any_=[flow_run_id]))
    final_types = filters.TaskRunFilterStateType(any_=[StateType.COMPLETED, StateType.FAILED])
    final = filters.TaskRunFilter(state=filters.TaskRunFilterState(type=final_types))
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            # The API pages at 200 runs: asking for the last one tells whether all are there.
            last = client.read_task_runs(
                flow_run_filter=flows, task_run_filter=final, offset=task_runs - 1, limit=1
            )
            if last:
                return
            time.sleep(0.5)


def bare_map(cells: int) -> tuple[float, float]:
    """(end to end, inside the flow) for a bare `.map` of no-op tasks."""
    from prefect import flow, task

    @task
    def noop(i: int) -> int:
        return i

    @flow
    def bare(n: int) -> float:
        start = time.perf_counter()
        noop.map(range(n)).result()
        return time.perf_counter() - start

    start = time.perf_counter()
    state = bare(cells, return_state=True)
    end_to_end = time.perf_counter() - start
    settle(state.state_details.flow_run_id, cells)
    return end_to_end, state.result()


def sweep_run(study: dict[str, Any] | str, runs: Path) -> tuple[float, float, dict[str, Any]]:
    """(end to end, inside the flow, the flow's result) for one sweep."""
    from llc.sweeps.flow import sweep

    start = time.perf_counter()
    state = sweep(study=study, runs_dir=str(runs), return_state=True)
    end_to_end = time.perf_counter() - start
    result = state.result()
    settle(state.state_details.flow_run_id, result["total"])
    return end_to_end, result["wall_s"], result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3, help="interleaved repetitions; medians are reported")
    parser.add_argument("--skip-quick", action="store_true", help="only the no-op comparison")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow

    @flow
    def warm_up() -> None:
        """Starts the temporary server and loads Prefect's machinery before anything is timed."""

    warm_up()
    times: dict[str, list[tuple[float, float]]] = {"bare_map": [], "sweep_noop": [], "sweep_noop_cached": []}
    report: dict[str, Any] = {"cores": os.cpu_count(), "cells": args.cells, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="llc-bench-") as tmp:
        noop_study = {"name": "noop", "experiment": "orchestration:NoOp", "seeds": list(range(args.cells))}
        # Interleaved, so a busy moment on a shared machine hits both sides alike.
        for rep in range(args.repeat):
            times["bare_map"].append(bare_map(args.cells))
            end_to_end, inside, _ = sweep_run(noop_study, Path(tmp) / f"noop{rep}")
            times["sweep_noop"].append((end_to_end, inside))
            end_to_end, inside, cached = sweep_run(noop_study, Path(tmp) / f"noop{rep}")
            times["sweep_noop_cached"].append((end_to_end, inside))
            assert cached["cached"] == args.cells, cached
        for kind, pairs in times.items():
            report[f"{kind}_s"] = [round(end_to_end, 2) for end_to_end, _ in pairs]
            report[f"{kind}_in_flow_s"] = [round(inside, 2) for _, inside in pairs]
        for where in ("", "_in_flow"):
            sweep_s, bare_s = report[f"sweep_noop{where}_s"], report[f"bare_map{where}_s"]
            report[f"noop_ratio{where}_median"] = statistics.median(sweep_s) / statistics.median(bare_s)
        if not args.skip_quick:
            quick = str(ROOT / "studies" / "quick.yaml")
            report["quick_first_s"], report["quick_first_in_flow_s"], first = sweep_run(
                quick, Path(tmp) / "q"
            )
            report["quick_cached_s"], report["quick_cached_in_flow_s"], again = sweep_run(
                quick, Path(tmp) / "q"
            )
            assert first["ok"] == first["total"] and again["cached"] == again["total"], (first, again)
            report["quick_cells"] = first["total"]
            report["cached_ratio"] = report["quick_cached_s"] / report["quick_first_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in report.items()}))


if __name__ == "__main__":
    main()
