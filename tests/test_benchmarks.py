"""The throughput benchmark runs end to end in its quick mode and writes a usable results file."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

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
