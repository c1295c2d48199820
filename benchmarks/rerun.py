"""A sweep's fixed cost, end to end from the shell: the fully cached re-run of the quick study.

Both ways are timed in one invocation, interleaved, on the same fully cached runs directory:
- `local server`: `python flows/sweep.py` as a user runs it, on the local server that the first sweep
  started (the default since the embedded default was hardened);
- `temporary server`: the same flow called without the launcher, on Prefect's temporary server,
  which starts and stops with each run (what `python flows/sweep.py` did before).
The local-server runs are also broken down from their own log: process start and imports until the
flow begins, the flow's set-up until the first cell, the cells, and the end (results, artifacts,
exit). Results: benchmarks/results/rerun.json and docs/performance.md.
Run: `.venv/bin/python benchmarks/rerun.py [--repeat 5]`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from llc.launch import local_server

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "studies" / "quick.yaml"
STAMP = re.compile(r"^(\d\d:\d\d:\d\d\.\d+) \| \w+ +\| (.*)$")
TEMPORARY = "import sys; from llc.sweeps.flow import sweep; sweep(study=sys.argv[1], runs_dir=sys.argv[2])"


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Wall seconds, the start (epoch seconds) and the combined output of one command."""
    start = time.time()
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{argv} exited {done.returncode}:\n{done.stderr[-3000:]}")
    return wall, start, done.stdout + done.stderr


def phases(output: str, start: float, wall: float) -> dict[str, float]:
    """Seconds from the process start to the flow's first line, the first cell, the last cell, the exit."""
    day = datetime.fromtimestamp(start).date()
    marks: dict[str, float] = {}
    for line in output.splitlines():
        match = STAMP.match(line)
        if not match:
            continue
        clock = datetime.strptime(match.group(1), "%H:%M:%S.%f").time()
        at = datetime.combine(day, clock).timestamp() - start
        text = match.group(2)
        if "Beginning flow run" in text:
            marks.setdefault("flow begins", at)
        elif "Task run" in text:
            marks.setdefault("first cell done", at)
            marks["last cell done"] = at
        elif "Finished in state" in text and "Flow run" in text:
            marks["flow finished"] = at
    ordered = ["flow begins", "first cell done", "last cell done", "flow finished"]
    out, previous = {}, 0.0
    names = {"flow begins": "start + imports", "first cell done": "flow set-up (plan, backend, first cell)",
             "last cell done": "the other cells", "flow finished": "results, summary, artifacts"}  # fmt: skip
    for key in ordered:
        if key in marks:
            out[names[key]] = round(marks[key] - previous, 3)
            previous = marks[key]
    out["exit"] = round(wall - previous, 3)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "rerun.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llc-rerun-") as tmp:
        runs, home = Path(tmp) / "runs", Path(tmp) / "prefect-home"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLC_"))}
        env["PREFECT_HOME"] = str(home)
        local = [sys.executable, "flows/sweep.py", "--study", str(STUDY), "--runs-dir", str(runs)]
        temporary = [sys.executable, "-c", TEMPORARY, str(STUDY), str(runs)]
        first, _, _ = timed(local, env)  # computes every cell and starts the local server
        print(f"first run (computes 32 cells, starts the local server): {first:.1f} s", flush=True)
        times: dict[str, list[float]] = {"local server": [], "temporary server": []}
        breakdowns = []
        try:
            for _ in range(args.repeat):
                wall, start, output = timed(local, env)
                times["local server"].append(wall)
                breakdowns.append(phases(output, start, wall))
                times["temporary server"].append(timed(temporary, env)[0])
                print({k: round(v[-1], 2) for k, v in times.items()}, flush=True)
        finally:
            local_server.stop(home)
    medians = {k: round(statistics.median(v), 3) for k, v in times.items()}
    result: dict[str, Any] = {
        "what": "fully cached re-run of studies/quick.yaml (32 cells), end to end from the shell",
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg()[0],
        "first_run_s": round(first, 3),
        "median_s": medians,
        "runs_s": {k: [round(x, 3) for x in v] for k, v in times.items()},
        "speedup": round(medians["temporary server"] / medians["local server"], 2),
        "local_server_breakdown_median_s": {
            key: round(statistics.median(b[key] for b in breakdowns if key in b), 3) for key in breakdowns[0]
        },
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
