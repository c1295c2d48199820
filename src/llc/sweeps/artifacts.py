"""Prefect artifacts of a sweep: results table, markdown summary, live progress, a link per cell (with
whether its estimate can be trusted)."""

from __future__ import annotations

import base64
import contextvars
import re
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from llc.sweeps.summary import flag_names


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


def publish(
    sweep_id: str,
    rows: list[dict[str, Any]],
    markdown: str,
    stored: dict[str, str | None] | None = None,
    stored_results: str | None = None,
) -> None:
    """The results table, the summary, one link per cell to its run directory (and, with a bucket, to
    its stored copy: `stored` maps run_id to an s3:// folder or None while pending), and a link to the
    stored results.csv.

    The links are one artifact, not one per cell: a server write per cell costs more than a no-op cell's
    whole task. The writes go out together, so one slow answer of a busy server delays the sweep once.
    """
    writes = [
        partial(create_table_artifact, table=rows, key=artifact_key(sweep_id, "results"),
                description=f"one row per cell of sweep {sweep_id}"),
        partial(create_markdown_artifact, markdown=markdown, key=artifact_key(sweep_id, "summary"),
                description=f"summary of sweep {sweep_id}"),
        partial(create_markdown_artifact, markdown=run_links(rows, stored),
                key=artifact_key(sweep_id, "runs"),
                description=f"a link per cell to its run directory, sweep {sweep_id}"),
    ]  # fmt: skip
    if stored_results:
        writes.append(partial(create_link_artifact, link=stored_results, link_text=stored_results,
                              key=artifact_key(sweep_id, "stored-results"),
                              description=f"results.csv of sweep {sweep_id} in the bucket"))  # fmt: skip
    with ThreadPoolExecutor(len(writes)) as pool:
        # Each write runs in a copy of this context, so the artifacts belong to the flow run.
        for done in [pool.submit(contextvars.copy_context().run, write) for write in writes]:
            done.result()


def inline_image(path: Path) -> str:
    """A PNG as a data URI: the Prefect UI's markdown renders `data:image/` sources, and the artifact then
    needs nothing served beside the server (the image lives in the artifact, 20–80 KB a figure)."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


def run_links(rows: list[dict[str, Any]], stored: dict[str, str | None] | None = None) -> str:
    """A markdown table with a link from every cell to its run directory, and to its stored copy."""
    lines = ["| cell | status | run directory |", "| --- | --- | --- |"]
    if stored is not None:
        lines = ["| cell | status | run directory | stored |", "| --- | --- | --- | --- |"]
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for row in rows:  # a restricted run's parts are rows of one cell, with one run directory
        by_cell.setdefault(row["cell"], []).append(row)
    for parts in by_cell.values():
        row = parts[0]
        status = row["status"] if row["status"] == "ok" else f"{row['status']}: {row['error_type']}"
        untrusted = [part for part in parts if part["status"] == "ok" and part.get("trusted") is False]
        if untrusted:
            status += ", untrusted: " + "; ".join(_untrusted(part) for part in untrusted)
        status += " (cached)" if row["cached"] else ""
        run_dir = Path(row["run_dir"] or "")
        link = f"[{run_dir}]({run_dir.as_uri()})" if run_dir.is_absolute() else "-"
        line = f"| {row['cell']} | {status} | {link} |"
        if stored is not None:
            line += f" {_stored(stored, row['run_id'])} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


def _untrusted(row: dict[str, Any]) -> str:
    flags = ", ".join(flag_names(row))
    return f"{row['restrict']} ({flags})" if row.get("restrict") is not None else flags


def _stored(stored: dict[str, str | None], run_id: str) -> str:
    if run_id not in stored:
        return "-"
    folder = stored[run_id]
    return f"[{folder}]({folder})" if folder else "upload pending"


def storage_markdown(stored_results: str | None, pending: int) -> str:
    """The summary's storage section: where results.csv is stored and how many uploads are pending."""
    where = f"[{stored_results}]({stored_results})" if stored_results else "upload pending"
    return f"\n## Storage\n\nresults.csv in the bucket: {where}\n\nuploads pending: {pending}\n"
