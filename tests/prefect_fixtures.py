"""A real Prefect server, the repository's deployments and a process worker, driven by deployments/prefect/.

Loaded with `pytest_plugins = ["prefect_fixtures"]` (test modules import it only for type hints), so the
session-scoped server and the one end-to-end deployment run are shared by every module that uses them.
The server's address reaches subprocesses through their environment and the client through
`PrefectServer.client()`; nothing here sets PREFECT_API_URL for the other tests.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

if TYPE_CHECKING:
    from s3_fixtures import S3Server

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
SCRIPTS = ROOT / "deployments" / "prefect"
PREFECT = Path(sys.executable).with_name("prefect")
POOL = "llc-process"
PROBE = "sweep_probe:Probe"
TIMINGS: dict[str, float] = {}  # seconds, printed at the end of the session (pytest -s)


@dataclass(frozen=True)
class PrefectServer:
    """A server started by deployments/prefect/server.sh; `env` is what a client subprocess needs."""

    url: str
    state: Path
    env: dict[str, str] = field(repr=False)

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def run(
        self, *command: str | Path, extra_env: dict[str, str] | None = None, timeout_s: float = 120
    ) -> str:
        """Run a command against this server; fails the test with its output when it fails."""
        done = subprocess.run(
            [str(part) for part in command],
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        if done.returncode != 0:
            pytest.fail(
                f"{' '.join(map(str, command))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
            )
        return done.stdout + done.stderr

    def deploy(self) -> str:
        """`deploy.sh`: the pool if missing, then `prefect --no-prompt deploy --all` from the repository."""
        return self.run(SCRIPTS / "deploy.sh")

    @contextmanager
    def client(self) -> Iterator[SyncPrefectClient]:
        """A client of this server, for this block only (other tests keep their own API URL)."""
        with temporary_settings({PREFECT_API_URL: self.api_url}), get_client(sync_client=True) as client:
            yield client


@dataclass(frozen=True)
class DeploymentRun:
    """A flow run of sweep/local executed by a run-once worker."""

    flow_run_id: str
    runs_dir: Path
    study: Path
    worker_output: str


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def live_prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """`server.sh start` on a free port with a fresh SQLite database; `server.sh stop` at the end."""
    state = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(state / "client-home"),  # the CLI's profiles, apart from the server's
        "LLC_PREFECT_STATE": str(state / "server"),
        "LLC_PREFECT_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "PREFECT": str(PREFECT),  # the scripts use this venv's prefect
    }
    server = PrefectServer(url=f"http://127.0.0.1:{port}", state=state, env=env)
    started = time.monotonic()
    try:
        server.run(SCRIPTS / "server.sh", "start", timeout_s=180)
        TIMINGS["server start"] = time.monotonic() - started
        yield server
    finally:
        subprocess.run([SCRIPTS / "server.sh", "stop"], env=env, capture_output=True, timeout=60)
        print("\nprefect server timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items()))


@pytest.fixture(scope="session")
def sweep_deployments(live_prefect_server: PrefectServer) -> PrefectServer:
    """The pool and every deployment of prefect.yaml, by `deploy.sh` (`prefect --no-prompt deploy --all`)."""
    started = time.monotonic()
    live_prefect_server.deploy()
    TIMINGS["deploy --all"] = time.monotonic() - started
    return live_prefect_server


E2E_S3_PREFIX = "deployment-e2e"


@pytest.fixture(scope="session")
def sweep_worker_env(s3_server: S3Server) -> dict[str, str]:
    """The worker of the end-to-end sweep stores results in a real S3 server (SeaweedFS), configured
    through the environment as a user would, under its own prefix."""
    return s3_server.settings_env(E2E_S3_PREFIX)


def probe_study_file(folder: Path) -> Path:
    """Three probe cells, one of which fails on purpose: the sweep still completes and reports it."""
    folder.mkdir(parents=True, exist_ok=True)
    study = {
        "name": "server-probe",
        "experiment": PROBE,
        "base": {"markers": str(folder / "markers")},
        "problems": [
            {"name": "alpha", "overrides": {"x": 1}},
            {"name": "beta", "overrides": {"x": 2}},
            {"name": "broken", "overrides": {"x": 3, "fail": "valueerror"}},
        ],
        "seeds": [0],
        "execution": {"max_parallel": 2, "retries": 0, "timeout_s": 60},
    }
    path = folder / "server-probe.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def run_deployment(
    server: PrefectServer,
    study: Path,
    runs_dir: Path,
    workdir: Path,
    extra_env: dict[str, str] | None = None,
    plain_worker: bool = False,
    **params: Any,
) -> DeploymentRun:
    """`prefect deployment run sweep/local` with the study and runs_dir, then `worker.sh --run-once` runs it
    (with plain_worker, `prefect worker start --pool llc-process --run-once` with no LLC_PROJECT_DIR).

    The worker starts in `workdir`, not the repository: the deployment's pull step must find the code.
    """
    parameters = json.dumps({"study": str(study), "runs_dir": str(runs_dir), **params})
    created = server.run(PREFECT, "--no-prompt", "deployment", "run", "sweep/local", "--params", parameters)
    flow_run_id = next(line.split()[-1] for line in created.splitlines() if "UUID:" in line)
    workdir.mkdir(parents=True, exist_ok=True)
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    worker = [PREFECT, "worker", "start", "--pool", "llc-process", "--run-once"]
    env = {**server.env, "PYTHONPATH": pythonpath, **(extra_env or {})}
    if plain_worker:
        env.pop("LLC_PROJECT_DIR", None)
    done = subprocess.run(
        worker if plain_worker else [SCRIPTS / "worker.sh", "--run-once"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    if done.returncode != 0:
        pytest.fail(f"worker.sh --run-once exited {done.returncode}:\n{output}")
    return DeploymentRun(flow_run_id=flow_run_id, runs_dir=runs_dir, study=study, worker_output=output)


@pytest.fixture(scope="session")
def sweep_run(
    sweep_deployments: PrefectServer,
    sweep_worker_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> DeploymentRun:
    """One end-to-end run of sweep/local on the probe study, shared by the server and UI tests."""
    folder = tmp_path_factory.mktemp("deployment-run")
    started = time.monotonic()
    run = run_deployment(
        sweep_deployments, probe_study_file(folder / "study"), folder / "runs", folder / "worker",
        extra_env=sweep_worker_env,
    )  # fmt: skip
    TIMINGS["deployment run to Completed"] = time.monotonic() - started
    return run
