"""The Prefect UI in headless Chromium shows the deployed sweep's flow run, its cells and its artifacts."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from headless_chromium import Page, chromium
from PIL import Image
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

if TYPE_CHECKING:
    from prefect_fixtures import DeploymentRun, PrefectServer

pytest_plugins = ["prefect_fixtures", "s3_fixtures"]

CELLS = ("alpha-s0", "beta-s0", "broken-s0")
TESTS = Path(__file__).resolve().parent


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
        assert f"server-probe-{sweep_run.flow_run_id[:6]}" in logs and "Completed" in logs
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


# Every figure in the page, once the browser has finished with it: a broken image is complete with width 0.
IMAGES_JS = """[...document.querySelectorAll('img')].filter((img) => img.alt).map((img) => ({
  alt: img.alt, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  inline: img.src.startsWith('data:image/png;base64,')}))"""


def test_the_summary_artifact_shows_the_sweep_s_figures_inline(
    live_prefect_server: PrefectServer, tmp_path: Path
) -> None:
    """A sweep over checkpoints, recorded on the server: its summary shows both LLC figures, rendered."""
    for step, llc in ((0, 2.0), (10, 2.5), (100, 6.0), (1000, 9.0), (10_000, 9.5)):
        (tmp_path / f"ckpt_{step}.txt").write_text(f"llc={llc} L0={1 / (1 + step)}\n")
    study = {
        "name": "ui-figures", "experiment": "sweep_probe:Probe", "base": {"weights": "ckpt_*.txt"},
        "samplers": [{"name": "sgld", "overrides": {"x": 1}}, {"name": "hmc", "overrides": {"x": 2}}],
        "execution": {"max_parallel": 2, "retries": 0},
    }  # fmt: skip
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(study))
    study_path, runs = tmp_path / "study.yaml", tmp_path / "runs"
    pythonpath = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    live_prefect_server.run(
        sys.executable, TESTS.parent / "flows/sweep.py", "--study", study_path, "--runs-dir", runs,
        extra_env={"PYTHONPATH": pythonpath},
    )  # fmt: skip
    out = next((runs / "sweeps").iterdir())
    plots = {
        name: Image.open(out / "plots" / name).size for name in ("llc_by_step.png", "llc_over_training.png")
    }
    key = f"sweep-{out.name}-summary"
    with live_prefect_server.client() as client:
        (artifact,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    expected = {
        "LLC of each sampler at each checkpoint": plots["llc_by_step.png"],
        "LLC over training": plots["llc_over_training.png"],
    }
    with chromium(tmp_path / "profile", height=1400) as page:
        # The UI that deep links open (v1): the flow run's Artifacts tab, then the summary's card.
        page.goto(f"{live_prefect_server.url}/runs/flow-run/{artifact.flow_run_id}")
        page.wait_for(lambda text: "Artifacts" in text)
        open_tab(page, "Artifacts", key)
        page.click(key)
        assert figures_shown(page) == expected
        assert_a_real_picture(page.screenshot(tmp_path / "summary-figures-v1.png"))
        # The UI that the server's front page opens (v2, React): the artifact's own page.
        page.goto(f"{live_prefect_server.url}/v2/artifacts/artifact/{artifact.id}")
        assert figures_shown(page) == expected
        assert_a_real_picture(page.screenshot(tmp_path / "summary-figures-v2.png"))


def figures_shown(page: Page) -> dict[str, tuple[int, int]]:
    """Each inline figure of the page by title, at the size the browser decoded it (0 wide: broken)."""
    page.wait_for(
        lambda text: "LLC over training" in text and "LLC of each sampler at each checkpoint" in text
    )
    deadline = time.monotonic() + 30
    while not (images := page.evaluate(IMAGES_JS)) or not all(i["complete"] for i in images):
        assert time.monotonic() < deadline, f"images still loading: {images}"
        time.sleep(0.25)
    page.evaluate("document.querySelector('img[alt=\"LLC over training\"]').scrollIntoView()")
    time.sleep(0.5)
    return {i["alt"]: (i["width"], i["height"]) for i in images if i["inline"]}
