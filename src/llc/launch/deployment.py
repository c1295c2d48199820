"""The pull step of prefect.yaml's deployments: a flow run works from the llc checkout.

A process worker starts each flow run in a fresh temporary folder; this step moves it to the project,
named by LLC_PROJECT_DIR or, without it, the checkout the worker's `llc` package is installed from
(`pip install -e .`), so `prefect worker start --pool llc-process` needs no extra variable.
"""

from __future__ import annotations

import os
from pathlib import Path

import llc

ENTRYPOINT = Path("flows") / "sweep.py"


def project_directory(directory: str = "") -> dict[str, str]:
    """chdir to the project (the folder holding flows/sweep.py); one clear error when there is none."""
    given = directory or os.environ.get("LLC_PROJECT_DIR", "")
    candidates = [Path(given)] if given else [Path(llc.__file__).resolve().parents[2]]
    for folder in candidates:
        if (folder / ENTRYPOINT).is_file():
            os.chdir(folder)
            return {"directory": str(folder)}
    where = f"LLC_PROJECT_DIR={given}" if given else f"the installed llc package ({llc.__file__})"
    raise FileNotFoundError(
        f"cannot find the llc project ({ENTRYPOINT} under {where}): start the worker with "
        "LLC_PROJECT_DIR=/path/to/your/llc/checkout (deployments/prefect/worker.sh sets it)"
    )
