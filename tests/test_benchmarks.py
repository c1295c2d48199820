"""The throughput benchmark runs end to end in its quick mode and writes a usable results file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "throughput.py"


def test_quick_benchmark_reports_draws_per_second_per_chain_count_and_an_llc(tmp_path: Path) -> None:
    out = tmp_path / "throughput.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--chains", "8", "32", "64", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=120,  # a guard against a hang; the run takes seconds
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())

    assert [row["chains"] for row in results["rows"]] == [8, 32, 64]
    assert all(row["eager_draws_per_s"]["min"] > 0 for row in results["rows"])
    assert results["ceiling_draws_per_s"] > 0
    assert math.isfinite(results["llc"]["engine"]["llc_mean"])
    devinterp = results["devinterp"]
    if "skipped" in devinterp:
        # Without devinterp (the main environment) the run still succeeds and says why it left it out.
        assert "devinterp skipped" in proc.stdout
        print(f"note: {devinterp['skipped']}")
    else:
        assert devinterp["median"] > 0
        assert math.isfinite(results["llc"]["devinterp"]["llc_mean"])


def test_quick_own_model_benchmark_times_both_workloads_and_the_reference_pair(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")  # the digits data set (the bench extra installs it)
    out = tmp_path / "own_model.json"
    script = Path(__file__).parents[1] / "benchmarks" / "own_model.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert set(results["workloads"]) == {"digits_mlp", "transformer"}
    for entry in results["workloads"].values():
        assert entry["engine_draws_per_s"]["min"] > 0 and entry["d"] > 0
        if "skipped" not in results["devinterp"]:
            assert entry["speedup"]["median"] > 0 and math.isfinite(entry["llc"]["z"])
    assert results["reference"]["generic_over_hand_written"]["median"] > 0


def test_scale_benchmark_loses_and_duplicates_no_cell_on_standing_sqlite_and_postgresql_servers(
    tmp_path: Path,
) -> None:
    """The 2,000-cell benchmark's machinery at 100 cells: its own PostgreSQL and Prefect servers."""
    out = tmp_path / "scale.json"
    script = SCRIPT.with_name("scale.py")
    proc = subprocess.run(
        [sys.executable, str(script), "--cells", "100", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,  # two server start-ups and two small sweeps take about a minute
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(out.read_text())
    for database in ("sqlite", "postgresql"):
        (sweep,) = report[database]["sweep"]
        assert (sweep["ok"], sweep["lost"], sweep["duplicated"]) == (100, 0, 0), database
        assert report[database]["bare_s_median"] > 0


def test_quick_peers_benchmark_runs_this_engine_s_worker_and_names_the_peers_it_left_out(
    tmp_path: Path,
) -> None:
    """The worker protocol and this engine's side of benchmarks/peers.py (the peers' own interpreters are
    built by `make bench-peers` only; without them the run says so)."""
    pytest.importorskip("sklearn")
    out = tmp_path / "peers.json"
    script = Path(__file__).parents[1] / "benchmarks" / "peers.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--only", "engine", "--chains", "8", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["chains"]["8"]["engine"]["draws_per_s"]["min"] > 0


@pytest.mark.parametrize("defaults", [False, True], ids=["fixed step", "defaults"])
def test_quick_parts_benchmark_times_the_heads_as_one_run_and_one_run_per_head(
    tmp_path: Path, defaults: bool
) -> None:
    out = tmp_path / "parts.json"
    script = Path(__file__).parents[1] / "benchmarks" / "parts.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(out), *(["--defaults"] if defaults else [])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    results = json.loads(out.read_text())
    assert results["heads"] == 8 and results["defaults"] is defaults
    assert results["speedup_whole_call"]["median"] > 0 and results["rounds"][0]["batched_sampling_s"] > 0
