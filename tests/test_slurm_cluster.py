"""deployments/slurm/up.sh: a single-node cluster with accounting, kept up quickly and idempotently."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from slurm_fixtures import STATE, UP, slurm_cluster

__all__ = ["slurm_cluster"]

pytestmark = pytest.mark.timeout(120)


def up() -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    done = subprocess.run([str(UP)], capture_output=True, text=True, timeout=120)
    return time.perf_counter() - start, done


def test_up_returns_in_under_two_seconds_when_the_cluster_is_up(slurm_cluster: str) -> None:
    seconds, done = up()
    assert done.returncode == 0, done.stderr
    assert seconds < 2.0
    assert "starting" not in done.stderr  # nothing was (re)started


def test_the_node_is_idle_and_accounting_answers(slurm_cluster: str) -> None:
    node = subprocess.run(["sinfo", "-h", "-n", slurm_cluster, "-o", "%t"], capture_output=True, text=True)
    assert node.stdout.strip() in ("idle", "mix", "alloc")
    sacct = subprocess.run(["sacct", "-n", "-X", "-S", "now-1minutes"], capture_output=True, text=True)
    assert sacct.returncode == 0, sacct.stderr
    assoc = ["sacctmgr", "-n", "-P", "list", "assoc", "user=root", "format=account"]
    accounts = subprocess.run(assoc, capture_output=True, text=True)
    assert "llc" in accounts.stdout.split()


@pytest.mark.parametrize("daemon", ["slurmd", "slurmdbd"])
def test_up_restarts_a_daemon_that_died(slurm_cluster: str, daemon: str) -> None:
    pid = int((STATE / "run" / f"{daemon}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    seconds, done = up()
    assert done.returncode == 0, done.stderr
    assert f"starting {daemon}" in done.stderr
    assert int((STATE / "run" / f"{daemon}.pid").read_text()) != pid
    assert seconds < 30
