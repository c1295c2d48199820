"""Run a study as the Prefect flow `sweep` (deployments use the entrypoint flows/sweep.py:sweep).

    python flows/sweep.py [--study FILE] [--backend local|slurm|modal] [--backend-option KEY=VALUE ...]
                          [--runs-dir DIR] [--no-skip] [--max-parallel N] [--timeout-s S] [--retries N]

The same command as `llc sweep` (its options and exit codes: `--help`, docs/cli.md). Without
PREFECT_API_URL the sweep runs on the local Prefect server, started on first use and reused after.
"""

from __future__ import annotations

import typer

from llc.cli import one_line
from llc.cli.main import sweep_command
from llc.sweeps.flow import sweep

__all__ = ["sweep"]


def main() -> None:
    typer.run(one_line(sweep_command))


if __name__ == "__main__":
    main()
