"""The Prefect UI in headless Chromium shows the deployed sweep's flow run, its cells and its artifacts."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from headless_chromium import Page, chromium
from PIL import Image

if TYPE_CHECKING:
    from prefect_fixtures import DeploymentRun, PrefectServer

pytest_plugins = ["prefect_fixtures", "s3_fixtures"]

CELLS = ("alpha-s0", "beta-s0", "broken-s0")


def assert_a_real_picture(path: Path) -> None:
    """A rendered page, not a blank or single-colour frame."""
    assert path.stat().st_size > 20_000
    with Image.open(path) as image:
        assert image.width >= 1000 and image.height >= 800
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
    assert len(colours) > 100
    print(f"\nscreenshot: {path}")


def open_tab(page: Page, tab: str, *expected: str) -> str:
    page.click(tab)
    return page.wait_for(lambda text: all(word in text for word in expected))


def test_the_ui_shows_the_flow_run_with_its_cells_logs_and_artifacts(
    sweep_run: DeploymentRun, sweep_deployments: PrefectServer, tmp_path: Path
) -> None:
    sweep_id = next((sweep_run.runs_dir / "sweeps").iterdir()).name
    keys = [f"sweep-{sweep_id}-{kind}" for kind in ("results", "summary", "runs", "progress")]
    with chromium(tmp_path / "profile", height=1400) as page:
        flow_run_page = f"{sweep_deployments.url}/runs/flow-run/{sweep_run.flow_run_id}"
        page.goto(flow_run_page)
        # The header and the default Logs tab: the run's name, state, deployment and the flow's own log.
        logs = page.wait_for(lambda text: f"sweep {sweep_id} finished in" in text)
        assert "sweep-server-probe" in logs and "Completed" in logs
        assert "llc-process" in logs and "3 Task runs" in logs
        tasks = open_tab(page, "Task Runs", *CELLS)
        assert "(2 Completed, 1 Failed)" in tasks or ("2 Completed" in tasks and "1 Failed" in tasks)
        assert_a_real_picture(page.screenshot(tmp_path / "flow-run-task-runs.png"))
        artifacts = open_tab(page, "Artifacts", *keys)
        assert "TABLE" in artifacts and "MARKDOWN" in artifacts and "PROGRESS" in artifacts
        assert_a_real_picture(page.screenshot(tmp_path / "flow-run-artifacts.png"))

        # An artifact card opens the artifact: the results table as the UI renders it, one row per cell.
        page.click(keys[0])
        table = page.wait_for(lambda text: "3 Items" in text and all(cell in text for cell in CELLS))
        assert "ValueError" in table and str(sweep_run.runs_dir) in table
        assert_a_real_picture(page.screenshot(tmp_path / "results-artifact.png"))

        page.goto(flow_run_page)
        page.wait_for(lambda text: "Artifacts" in text)
        open_tab(page, "Artifacts", keys[1])
        page.click(keys[1])  # the summary, rendered from markdown
        summary = page.wait_for(lambda text: f"Sweep {sweep_id}" in text and "Failed cells" in text)
        assert "success rate" in summary and "broken-s0" in summary
