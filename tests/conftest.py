"""Shared test setup: Prefect offline under a private PREFECT_HOME, and one temporary server per session."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before anything imports prefect: never touch ~/.prefect or the network, never use a configured server.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="llc-tests-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ.pop("PREFECT_API_URL", None)
# A fresh database on 2 busy cores can take longer than Prefect's default 20 s to start a temporary server.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server (the test harness's subprocess server) shared by all tests; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture(scope="session", autouse=True)
def _stop_local_servers() -> Iterator[None]:
    """Sweeps started as commands start the local Prefect server of their PREFECT_HOME; stop it at the end."""
    yield
    from llc.launch import local_server

    local_server.stop(Path(os.environ["PREFECT_HOME"]))


@pytest.fixture
def fresh_prefect_home(tmp_path: Path) -> Iterator[Path]:
    """A new, empty PREFECT_HOME (as on a new machine) whose local server is stopped after the test."""
    from llc.launch import local_server

    home = tmp_path / "prefect-home"
    yield home
    local_server.stop(home)
