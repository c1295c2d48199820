"""Prefect artifacts of a sweep: results table, markdown summary, live progress, a link per cell."""

from __future__ import annotations

import contextvars
import re
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


def artifact_key(sweep_id: str, kind: str) -> str:
    """Keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"sweep-{sweep_id}-{kind}".lower())).strip("-")


class ProgressArtifact:
    """Percent of cells finished, updated at most every `every_s` seconds (and at 100%)."""

    def __init__(self, sweep_id: str, total: int, every_s: float) -> None:
        self.total, self.every_s = total, every_s
        self._last = time.monotonic()
        self._id = create_progress_artifact(
            progress=0.0,
            key=artifact_key(sweep_id, "progress"),
            description=f"cells finished of {total} in sweep {sweep_id}",
        )

    def due(self, done: int) -> bool:
        return done == self.total or time.monotonic() - self._last >= self.every_s

    def update(self, done: int) -> None:
        update_progress_artifact(self._id, progress=100.0 * done / max(self.total, 1))
        self._last = time.monotonic()


def publish(sweep_id: str, rows: list[dict[str, Any]], markdown: str) -> None:
    """The results table, the summary, and one link per cell to its run directory.

    The links are one artifact, not one per cell: a server write per cell costs more than a no-op cell's
    whole task. The writes go out together, so one slow answer of a busy server delays the sweep once.
    """
    writes = [
        partial(create_table_artifact, table=rows, key=artifact_key(sweep_id, "results"),
                description=f"one row per cell of sweep {sweep_id}"),
        partial(create_markdown_artifact, markdown=markdown, key=artifact_key(sweep_id, "summary"),
                description=f"summary of sweep {sweep_id}"),
        partial(create_markdown_artifact, markdown=run_links(rows), key=artifact_key(sweep_id, "runs"),
                description=f"a link per cell to its run directory, sweep {sweep_id}"),
    ]  # fmt: skip
    with ThreadPoolExecutor(len(writes)) as pool:
        # Each write runs in a copy of this context, so the artifacts belong to the flow run.
        for done in [pool.submit(contextvars.copy_context().run, write) for write in writes]:
            done.result()


def run_links(rows: list[dict[str, Any]]) -> str:
    """A markdown table with a link from every cell to its run directory."""
    lines = ["| cell | status | run directory |", "| --- | --- | --- |"]
    for row in rows:
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['error_type']}"
        status += " (cached)" if row["cached"] else ""
        lines.append(f"| {row['cell']} | {status} | [{row['run_dir']}]({Path(row['run_dir']).as_uri()}) |")
    return "\n".join(lines) + "\n"
