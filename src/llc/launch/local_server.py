"""The local Prefect server that sweeps use when no Prefect API is configured.

The first sweep on a Prefect home starts it in the background, in its own session (a terminal's
Ctrl-C never reaches it, and a killed sweep does not take it down), and later sweeps reuse it: they
start at once, and the Prefect UI shows every local sweep. It keeps its state beside Prefect's own,
in PREFECT_HOME: `llc-server.json` (pid, port, address) and `llc-server.log`. `llc server status`,
`llc server stop`. Prefect's own temporary server is not used: it starts on every run (8-20 s), dies
with a Ctrl-C while the flow still needs it, and outlives a killed flow.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from llc.settings import PREFECT_DEFAULTS
from llc.sweeps.live import alive

HOST = "127.0.0.1"
PREFERRED_PORT = 4200  # Prefect's usual address, when free
STATE_FILE = "llc-server.json"
LOG_FILE = "llc-server.log"
DEFAULT_START_TIMEOUT_S = 180.0


class ServerError(RuntimeError):
    """The local server cannot be started or reached; the message says what to do instead."""


@dataclass(frozen=True)
class Server:
    pid: int
    port: int
    home: str

    @property
    def url(self) -> str:
        """The API address (PREFECT_API_URL); the UI is the same without /api."""
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log(self) -> Path:
        return Path(self.home) / LOG_FILE


def prefect_home() -> Path:
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser()


def status(home: Path | None = None) -> Server | None:
    """The running local server of this Prefect home, if it answers."""
    server = _read(home or prefect_home())
    if server is not None and alive(server.pid) and healthy(server.url):
        return server
    return None


def ensure(
    home: Path | None = None,
    timeout_s: float = DEFAULT_START_TIMEOUT_S,
    announce: Callable[[str], None] | None = None,
) -> Server:
    """The running local server, started first if need be (one at a time per home: a file lock)."""
    home = home or prefect_home()
    if (server := status(home)) is not None:
        return server
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        known = _read(home)
        if known is not None and alive(known.pid):  # another sweep is starting it: wait for it
            return _wait_healthy(known, timeout_s)
        if announce is not None:
            announce(
                "starting the local Prefect server in the background (the first start on a new Prefect "
                "home takes 10-30 s; later sweeps reuse it; `llc server stop` stops it)"
            )
        return _wait_healthy(_start(home), timeout_s)


def stop(home: Path | None = None, timeout_s: float = 10.0) -> Server | None:
    """Stop the local server of this Prefect home (its whole process group); returns what was stopped."""
    home = home or prefect_home()
    server = _read(home)
    if server is None:
        return None
    if alive(server.pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while alive(server.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(server.pid, signal.SIGKILL)
    (home / STATE_FILE).unlink(missing_ok=True)
    return server


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _start(home: Path) -> Server:
    port = PREFERRED_PORT if _free(PREFERRED_PORT) else _any_free_port()
    env = {**os.environ, **{k: os.environ.get(k, v) for k, v in PREFECT_DEFAULTS.items()}}
    env["PREFECT_HOME"] = str(home)
    for key in ("PREFECT_API_URL", "PREFECT_SERVER_API_PORT"):
        env.pop(key, None)
    env["PREFECT_UI_API_URL"] = f"http://{HOST}:{port}/api"  # the UI calls the port it was really given
    with open(home / LOG_FILE, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
            start_new_session=True,  # its own process group: no terminal signal reaches it
        )  # fmt: skip
    server = Server(pid=proc.pid, port=port, home=str(home))
    (home / STATE_FILE).write_text(json.dumps(asdict(server)))
    return server


def _wait_healthy(server: Server, timeout_s: float) -> Server:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if healthy(server.url, timeout_s=1.0):
            return server
        if not alive(server.pid):
            (Path(server.home) / STATE_FILE).unlink(missing_ok=True)
            raise ServerError(_cannot_start(server, "it exited"))
        time.sleep(0.25)
    stop(Path(server.home))
    raise ServerError(_cannot_start(server, f"it did not answer within {timeout_s:g} s"))


def _cannot_start(server: Server, why: str) -> str:
    try:
        tail = server.log.read_text(errors="replace").strip().splitlines()[-5:]
    except OSError:
        tail = []
    shown = "".join(f"\n    {line}" for line in tail)
    return (
        f"the local Prefect server could not start: {why} (its log: {server.log}){shown}\n"
        "Start a Prefect server yourself (`prefect server start`, or `make server-up`), then point sweeps "
        "at it with PREFECT_API_URL=http://127.0.0.1:4200/api; LLC_SERVER_START_TIMEOUT_S gives a slow "
        "machine more time."
    )


def _read(home: Path) -> Server | None:
    try:
        data = json.loads((home / STATE_FILE).read_text())
        return Server(pid=int(data["pid"]), port=int(data["port"]), home=str(home))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind((HOST, port))
        except OSError:
            return False
    return True


def _any_free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    with open(home / "llc-server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
