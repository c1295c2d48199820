"""Sweeps of thousands of no-op cells against a standing Prefect server, on SQLite and on PostgreSQL.

For each database: a standing `prefect server start` (its own PREFECT_HOME and port; PostgreSQL is
Debian's, started here on a private port, data directory and socket directory), then, interleaved,
a bare `.map` of N no-op Prefect tasks and the sweep flow over N no-op cells (`orchestration:NoOp`)
on the local backend. Reported: wall times, the sweep's overhead per cell against the bare map, and
lost or duplicated cells (rows of results.csv against the study's cells, task runs the server
recorded against N); both must be 0.
Run: `.venv/bin/python benchmarks/scale.py [--cells 2000] [--repeat 1] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from orchestration import bare_map, settle

PG_BIN = Path("/usr/lib/postgresql")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(ready: Any, what: str, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready within {timeout_s:g} s")
        time.sleep(0.3)


@contextmanager
def postgres(folder: Path) -> Iterator[str]:
    """A private PostgreSQL server (Debian's binaries) on a free port; yields Prefect's database URL.
    As root it runs as the `postgres` user, which owns its data directory."""
    versions = sorted(PG_BIN.glob("*/bin/pg_ctl"))
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: `make postgres` (Debian's postgresql package)")
    bin_dir = versions[-1].parent
    data, sockets, port = folder / "data", folder / "run", free_port()
    data.mkdir(parents=True)
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(data, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    run = [*as_user, str(bin_dir / "pg_ctl"), "-D", str(data)]
    subprocess.run([*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c max_connections=200"
    subprocess.run([*run, "-o", options, "-l", str(folder / "postgres.log"), "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        subprocess.run([*as_user, str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port),
                        "-U", "postgres", "prefect"], check=True, capture_output=True)  # fmt: skip
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run([*run, "-m", "fast", "stop"], capture_output=True)


@contextmanager
def prefect_server(home: Path, database_url: str | None) -> Iterator[str]:
    """A standing `prefect server start` on a free port (SQLite under `home`, or `database_url`)."""
    port = free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/api"

    def healthy() -> bool:
        if server.poll() is not None:
            raise RuntimeError(f"prefect server exited; see {home / 'server.log'}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                return answer.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, "prefect server", timeout_s=180)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def sweep_once(cells: int, runs: Path) -> dict[str, Any]:
    """The sweep flow over `cells` no-op cells: times, and cells lost or duplicated on the way."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas import filters

    from llc.sweeps.flow import sweep
    from llc.sweeps.results import read_results

    study = {"name": "scale", "experiment": "orchestration:NoOp", "seeds": list(range(cells)),
             "execution": {"retries": 0}}  # fmt: skip
    start = time.perf_counter()
    state = sweep(study=study, runs_dir=str(runs), return_state=True)
    end_to_end = time.perf_counter() - start
    result = state.result()
    flow_run_id = state.state_details.flow_run_id
    settle(flow_run_id, cells)
    rows = read_results(Path(result["results"]))
    names = [row["cell"] for row in rows]
    run_filter = filters.FlowRunFilter(id=filters.FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        beyond = client.read_task_runs(flow_run_filter=run_filter, offset=cells, limit=5)
    return {
        "end_to_end_s": round(end_to_end, 2),
        "in_flow_s": result["wall_s"],
        "ok": result["ok"],
        "lost": cells - len(set(names)),
        "duplicated": len(names) - len(set(names)) + len(beyond),
    }


def measure(cells: int, repeat: int, tmp: Path) -> dict[str, Any]:
    """Interleaved bare maps and sweeps against the server at PREFECT_API_URL."""
    from prefect import flow

    @flow
    def warm_up() -> None:
        """Loads Prefect's machinery and opens the server's connections before anything is timed."""

    warm_up()
    bare, sweeps = [], []
    for rep in range(repeat):
        end_to_end, inside = bare_map(cells)
        bare.append({"end_to_end_s": round(end_to_end, 2), "in_flow_s": round(inside, 2)})
        sweeps.append(sweep_once(cells, tmp / f"runs{rep}"))
    sweep_s = statistics.median(s["end_to_end_s"] for s in sweeps)
    bare_s = statistics.median(b["end_to_end_s"] for b in bare)
    return {
        "bare_map": bare,
        "sweep": sweeps,
        "sweep_s_median": sweep_s,
        "bare_s_median": bare_s,
        "overhead_ms_per_cell": round(1000 * (sweep_s - bare_s) / cells, 2),
        "lost": sum(s["lost"] for s in sweeps),
        "duplicated": sum(s["duplicated"] for s in sweeps),
    }


def measure_in_child(cells: int, repeat: int, url: str, tmp: Path) -> dict[str, Any]:
    """`measure` in a fresh process: Prefect's event and log services stay bound to the first server
    a process talks to, so each server gets its own client process."""
    env = {**os.environ, "PREFECT_API_URL": url}
    argv = [sys.executable, __file__, "--measure", str(tmp), "--cells", str(cells), "--repeat", str(repeat)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring against {url} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--databases", nargs="+", default=["sqlite", "postgresql"])
    parser.add_argument("--json", type=Path, help="also write the report here")
    parser.add_argument("--measure", type=Path, help=argparse.SUPPRESS)  # the child of measure_in_child
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # A SIGTERM (a `timeout`, a CI job cancelled) unwinds the context managers: PostgreSQL and the
    # Prefect server are daemons of their own and would outlive an abrupt exit.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    if args.measure:
        print(json.dumps(measure(args.cells, args.repeat, args.measure)))
        return
    report: dict[str, Any] = {"cores": os.cpu_count(), "cells": args.cells, "repeat": args.repeat}
    with tempfile.TemporaryDirectory(prefix="llc-scale-") as tmp:
        os.chmod(tmp, 0o755)  # PostgreSQL runs as its own user and must reach its data directory
        for database in args.databases:
            folder = Path(tmp) / database
            folder.mkdir(mode=0o755)
            with database_url(database, folder) as db, prefect_server(folder / "home", db) as url:
                report[database] = measure_in_child(args.cells, args.repeat, url, folder)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    failures = [db for db in args.databases if report[db]["lost"] or report[db]["duplicated"]]
    if failures:
        raise SystemExit(f"cells lost or duplicated on {', '.join(failures)}")


@contextmanager
def database_url(database: str, folder: Path) -> Iterator[str | None]:
    """The database URL for the server: None (SQLite under its home) or a private PostgreSQL's."""
    if database == "sqlite":
        yield None
    else:
        with postgres(folder / "pg") as url:
            yield url


if __name__ == "__main__":
    main()
