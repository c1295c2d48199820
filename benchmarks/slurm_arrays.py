"""SLURM job arrays: a sweep of N no-op cells against N times the round trip of one cell, on a cluster.

1. Round trip of one no-op cell through the SLURM backend (submit, schedule, run, record), repeated;
   the median is the single-cell latency.
2. The sweep flow on backend=slurm over N no-op cells (max_parallel N): its wall time, the sbatch
   calls it made (counted by an sbatch wrapper put first on PATH, the `--test-only` check of the job
   shape included), and the span from its first job's start to its last job's end in sacct (what the
   cluster itself took). Targets: at most 2 sbatch calls, and a wall time well under N x the
   single-cell latency (what one sbatch per cell, waited on in turn, would cost).

Needs a SLURM cluster this machine submits to: `make slurm-up` starts one on this machine. Prefect's
temporary server is started by a warm-up flow first, so its start-up is not timed.
Run: `.venv/bin/python benchmarks/slurm_arrays.py [--cells 20] [--repeat 5] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any


def study(cells: int) -> dict[str, Any]:
    return {
        "name": "slurm-noop",
        "experiment": "orchestration:NoOp",
        "seeds": list(range(cells)),
        "execution": {"max_parallel": cells, "retries": 0, "timeout_s": 300},
    }


def single_cell_seconds(runs: Path, seed: int) -> float:
    """Round trip of one no-op cell on a fresh backend (a seed of its own, so nothing is cached)."""
    from llc.backends.slurm.backend import SlurmBackend
    from llc.sweeps.plan import plan_sweep

    (cell,) = plan_sweep({**study(1), "seeds": [seed]}).cells
    with SlurmBackend(max_parallel=1) as backend:
        start = time.perf_counter()
        record = backend.submit(cell, runs, False, 300).wait(timeout=300)
        seconds = time.perf_counter() - start
    assert record is not None and record.status == "ok", record
    return seconds


def cluster_span_s(job_ids: list[str]) -> float:
    """First start to last end (whole seconds) of the jobs, array elements included, by sacct (which
    may show an end as Unknown for a few seconds after the job's result is in)."""
    deadline = time.monotonic() + 60
    while True:
        out = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-o", "Start,End", "-j", ",".join(job_ids)],
            capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if "Unknown" not in out or time.monotonic() > deadline:
            break
        time.sleep(1)
    rows = [[datetime.fromisoformat(t) for t in line.split("|")] for line in out.splitlines()]
    return (max(end for _, end in rows) - min(start for start, _ in rows)).total_seconds()


def sbatch_counter(folder: Path) -> Path:
    """An `sbatch` first on PATH that runs the real one and logs its answer (`test-only` for a check of
    a job shape); returns the log."""
    real = shutil.which("sbatch")
    if real is None:
        raise SystemExit("sbatch not found: start a cluster with `make slurm-up`")
    log = folder / "sbatch.log"
    wrapper = folder / "sbatch"
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *--test-only*) echo test-only >> {log}; exec {real} "$@";; esac\n'
        f'out=$({real} "$@") || exit $?\necho "$out" >> {log}\necho "$out"\n'
    )
    wrapper.chmod(0o755)
    os.environ["PATH"] = f"{folder}{os.pathsep}{os.environ['PATH']}"
    log.touch()
    return log


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5, help="single-cell round trips and sweeps; medians")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import flow

    from llc.backends import BACKENDS
    from llc.sweeps.flow import sweep

    BACKENDS.setdefault("slurm", "llc.backends.slurm.backend:SlurmBackend")

    @flow
    def warm_up() -> None:
        """Starts the temporary server and loads Prefect's machinery before anything is timed."""

    warm_up()
    report: dict[str, Any] = {"cells": args.cells, "repeat": args.repeat, "cores": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="llc-bench-slurm-") as tmp:
        log = sbatch_counter(Path(tmp))
        single, sweeps, calls, spans = [], [], [], []
        # Interleaved, so a busy moment on a shared machine hits both sides alike.
        for rep in range(args.repeat):
            single.append(single_cell_seconds(Path(tmp) / "single", seed=10_000 + rep))
            before = len(log.read_text().splitlines())
            start = time.perf_counter()
            result = sweep(study=study(args.cells), backend="slurm", runs_dir=str(Path(tmp) / f"sweep{rep}"))
            sweeps.append(time.perf_counter() - start)
            answers = log.read_text().splitlines()[before:]
            submitted = [line.split()[-1] for line in answers if line.startswith("Submitted")]
            calls.append(len(answers))  # submissions and job-shape checks
            spans.append(cluster_span_s(submitted))
            assert result["ok"] == args.cells, result
        report["single_cell_s"] = statistics.median(single)
        report["sweep_s"] = statistics.median(sweeps)
        report["sbatch_calls"] = max(calls)
        report["cluster_span_s"] = statistics.median(spans)
        report["serial_single_s"] = args.cells * report["single_cell_s"]
        report["sweep_vs_serial"] = report["sweep_s"] / report["serial_single_s"]
        report["runs"] = {"single_cell_s": single, "sweep_s": sweeps, "sbatch_calls": calls, "span_s": spans}
    rounded = json.loads(json.dumps(report), parse_float=lambda v: round(float(v), 3))
    text = json.dumps(rounded, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
