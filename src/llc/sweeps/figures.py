"""The sweep's LLC figures for its summary, redrawn only when what they show has changed.

A fully cached re-run draws the same figures again; matplotlib's import and the drawing are most of
what such a re-run spends after its cells, so the figures carry a key of the rows they were drawn from.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

# Titles of the LLC figures, by file name: what the summary shows (the Prefect artifact inline).
LLC_FIGURES = {
    "llc_by_sampler.png": "LLC by problem and sampler",
    "llc_over_training.png": "LLC over training",
    "llc_by_step.png": "LLC of each sampler at each checkpoint",
    "llc_parts_over_training.png": "LLC of each part over training",
    "llc_parts_by_step.png": "LLC of each part at each checkpoint",
}
KEY_FILE = ".figures.json"
# What changes between runs of the same results without changing a figure.
UNDRAWN = {"cached", "duration_s", "attempts", "t_sampling_s", "t_erm_s", "t_warmup_s"}


def llc_figures(rows: list[dict[str, Any]], plots_dir: Path) -> dict[str, Path]:
    """The LLC figures of these rows in plots_dir, by title: the existing files when drawn from the same
    rows by the same code, else drawn now."""
    key = _key(rows)
    recorded = _recorded(plots_dir / KEY_FILE)
    if recorded.get("key") == key and all((plots_dir / name).exists() for name in recorded["files"]):
        return {LLC_FIGURES[name]: plots_dir / name for name in recorded["files"]}
    from llc.sweeps.plots import draw_llc_plots

    files = draw_llc_plots(rows, plots_dir)
    (plots_dir / KEY_FILE).write_text(json.dumps({"key": key, "files": [file.name for file in files]}))
    return {LLC_FIGURES[file.name]: file for file in files}


def _key(rows: list[dict[str, Any]]) -> str:
    shown = [{k: v for k, v in row.items() if k not in UNDRAWN} for row in rows]
    code = b"".join((Path(__file__).parent / name).read_bytes() for name in ("plots.py", "summary.py"))
    data = json.dumps(shown, sort_keys=True, default=str).encode()
    return hashlib.sha256(code + data).hexdigest()


def _recorded(path: Path) -> dict[str, Any]:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) and isinstance(recorded.get("files"), list) else {}
