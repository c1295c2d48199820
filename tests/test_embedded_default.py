"""`python flows/sweep.py` and `llc sweep` as a newcomer runs them: fresh Prefect homes on a busy machine,
Ctrl-C and SIGKILL in the middle, bad input. Real processes, real signals, the real local server."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from sweep_probe import alive, probe_study, rows_by_cell, wait_until

from llc.launch import local_server
from llc.rundir import RunDir

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SWEEP = [sys.executable, str(ROOT / "flows" / "sweep.py")]
LLC = [sys.executable, "-c", "from llc.cli import app; app()"]


def command(argv: list[str], home: Path, **popen: object) -> subprocess.Popen[str]:
    """A command in its own session (so its process group can be signalled), as from a fresh shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "LLC_"))}
    env.update(PREFECT_HOME=str(home), PYTHONPATH=str(TESTS))  # only the probe experiment on the path
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
    return subprocess.Popen(
        argv, env=env, cwd=ROOT, text=True, start_new_session=True, preexec_fn=_terminal_signals,
        **pipes,  # type: ignore[call-overload]
    )  # fmt: skip


def _terminal_signals() -> None:
    """SIGINT as at a terminal, even when the suite itself runs as a background job (which ignores it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def study_file(folder: Path, cells: int, sleep_s: float = 0.0, **execution: object) -> Path:
    problems = [{"name": f"c{i}", "overrides": {"sleep_s": sleep_s}} for i in range(cells)]
    path = folder / "study.yaml"
    path.write_text(yaml.safe_dump(probe_study(folder / "markers", problems, **execution)))
    return path


def workers(pid: int, home: Path) -> set[int]:
    """The sweep's own processes below pid: every descendant but the local server (meant to stay)."""
    server = local_server.status(home)
    return children(pid) - (children(server.pid) | {server.pid} if server else set())


def children(pid: int) -> set[int]:
    """Every descendant of pid, now."""
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    parents: dict[int, int] = {}
    for line in out.splitlines():
        child, parent = map(int, line.split())
        parents[child] = parent
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _spin() -> None:
    while True:
        pass


@contextlib.contextmanager
def busy_cores() -> Iterator[None]:
    """A busy loop on every core, as when the machine is doing something else."""
    spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(os.cpu_count() or 1)]
    for spinner in spinners:
        spinner.start()
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.join()


def assert_clean(output: str) -> None:
    assert "Traceback" not in output and "ERROR" not in output, output[-4000:]


def test_fresh_prefect_homes_on_a_loaded_machine_all_run_cleanly(tmp_path: Path) -> None:
    study = study_file(tmp_path, cells=2)
    homes = [tmp_path / f"home{i}" for i in range(3)]
    try:
        with busy_cores():
            for i, home in enumerate(homes):
                runs = tmp_path / f"runs{i}"
                sweep = command([*SWEEP, "--study", str(study), "--runs-dir", str(runs)], home)
                out, err = sweep.communicate(timeout=400)
                assert sweep.returncode == 0, err[-4000:]
                assert_clean(out + err)
                assert rows_by_cell(out.strip().splitlines()[-1]).keys() == {"c0-s0", "c1-s0"}
                server = local_server.status(home)
                assert server is not None  # started, and left for the next sweep
                assert "telemetry" not in server.log.read_text()  # analytics off without being asked
    finally:
        for home in homes:
            local_server.stop(home)


def test_a_cached_rerun_reuses_the_local_server(tmp_path: Path, fresh_prefect_home: Path) -> None:
    study = study_file(tmp_path, cells=3)
    argv = [*SWEEP, "--study", str(study), "--runs-dir", str(tmp_path / "runs")]
    first = command(argv, fresh_prefect_home)
    assert first.wait(timeout=300) == 0
    server = local_server.status(fresh_prefect_home)
    assert server is not None
    again = command(argv, fresh_prefect_home)
    out, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert "starting the local Prefect server" not in err and "3 cached" in err
    assert_clean(out + err)
    assert local_server.status(fresh_prefect_home) == server  # the same process, not a new one


def test_ctrl_c_stops_the_sweep_keeps_finished_results_and_leaves_no_process(
    tmp_path: Path, fresh_prefect_home: Path
) -> None:
    runs = tmp_path / "runs"
    study = study_file(tmp_path, cells=10, sleep_s=1.5, max_parallel=2, retries=2)
    sweep = command([*SWEEP, "--study", str(study), "--runs-dir", str(runs)], fresh_prefect_home)
    done = lambda: sum(1 for p in runs.glob("*/complete.json"))  # noqa: E731
    wait_until(lambda: done() >= 2 or sweep.poll() is not None, 300, "two finished cells")
    assert sweep.poll() is None, sweep.communicate()
    descendants = workers(sweep.pid, fresh_prefect_home)
    assert descendants, "the sweep's worker processes"
    interrupted = time.monotonic()
    os.killpg(sweep.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
    out, err = sweep.communicate(timeout=30)
    assert time.monotonic() - interrupted < 10, err
    assert sweep.returncode == 130, err
    assert "stopping the sweep" in err and "Traceback" not in err
    rows = rows_by_cell(out.strip().splitlines()[-1])
    assert len(rows) == 10
    finished = {c for c, r in rows.items() if r["status"] == "ok"}
    assert len(finished) >= 2 and {r["status"] for r in rows.values()} == {"ok", "cancelled"}
    for cell in finished:
        assert RunDir(runs, str(rows[cell]["run_id"])).is_complete()  # an all-digit id reads as a number
    wait_until(lambda: not any(alive(pid) for pid in descendants), 5, "the sweep's workers to stop")
    assert local_server.status(fresh_prefect_home) is not None  # the standing server was not touched


def test_a_second_ctrl_c_leaves_at_once(tmp_path: Path, fresh_prefect_home: Path) -> None:
    runs = tmp_path / "runs"
    study = study_file(tmp_path, cells=4, sleep_s=30, max_parallel=2)
    log = tmp_path / "stderr.log"
    with log.open("w") as stderr:
        sweep = command(
            [*SWEEP, "--study", str(study), "--runs-dir", str(runs)], fresh_prefect_home, stderr=stderr
        )
    markers = tmp_path / "markers"
    wait_until(
        lambda: len(list(markers.glob("*"))) >= 2 or sweep.poll() is not None, 300, "two running cells"
    )
    descendants = workers(sweep.pid, fresh_prefect_home)
    os.killpg(sweep.pid, signal.SIGINT)
    # Two signals sent before the first is handled arrive as one: send the second once it was seen.
    wait_until(lambda: "stopping the sweep" in log.read_text(), 10, "the first Ctrl-C to be seen")
    os.killpg(sweep.pid, signal.SIGINT)
    sweep.communicate(timeout=10)
    err = log.read_text()
    assert sweep.returncode == 130 and "leaving now" in err, err
    wait_until(lambda: not any(alive(pid) for pid in descendants), 5, "the sweep's workers to stop")


def test_a_sigkilled_sweep_leaves_only_the_standing_server_which_the_next_sweep_reuses(
    tmp_path: Path, fresh_prefect_home: Path
) -> None:
    study = study_file(tmp_path, cells=4, sleep_s=30, max_parallel=2)
    sweep = command([*SWEEP, "--study", str(study), "--runs-dir", str(tmp_path / "runs")], fresh_prefect_home)
    markers = tmp_path / "markers"
    wait_until(
        lambda: len(list(markers.glob("*"))) >= 2 or sweep.poll() is not None, 300, "two running cells"
    )
    server = local_server.status(fresh_prefect_home)
    assert server is not None
    descendants = workers(sweep.pid, fresh_prefect_home)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.communicate(timeout=30)
    wait_until(lambda: not any(alive(pid) for pid in descendants), 5, "the sweep's workers to stop")
    assert local_server.status(fresh_prefect_home) == server
    (tmp_path / "again").mkdir()
    quick = study_file(tmp_path / "again", cells=1)
    again = command([*SWEEP, "--study", str(quick), "--runs-dir", str(tmp_path / "runs")], fresh_prefect_home)
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0 and "starting the local Prefect server" not in err, err
    assert local_server.status(fresh_prefect_home) == server


# -- input a user gets wrong: one line, exit 2, nothing written, Prefect never touched ----------------


def _bad_studies(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    good = probe_study(tmp_path / "markers", [{"name": "a"}])
    files = {
        "no samplers": {**good, "samplers": []},
        "no problems": {**good, "problems": []},
        "a device that is not here": {"name": "gpu", "base": {"device": "cuda", "widths": [4]}},
    }
    paths = {}
    for what, study in files.items():
        path = tmp_path / f"{what.replace(' ', '-')}.yaml"
        path.write_text(yaml.safe_dump(study))
        paths[what] = path
    good_path = tmp_path / "good.yaml"
    good_path.write_text(yaml.safe_dump(good))
    (tmp_path / "a-file").write_text("not a folder")
    runs = ["--runs-dir", str(tmp_path / "runs")]
    return {
        "no samplers": (["--study", str(paths["no samplers"]), *runs], "samplers: an empty list"),
        "no problems": (["--study", str(paths["no problems"]), *runs], "problems: an empty list"),
        "a device that is not here": (
            ["--study", str(paths["a device that is not here"]), *runs],
            "device cuda is not available",
        ),
        "a study that does not exist": (["--study", str(tmp_path / "nope.yaml"), *runs], "nope.yaml"),
        "a runs dir that is a file": (
            ["--study", str(good_path), "--runs-dir", str(tmp_path / "a-file")],
            "is a file, not a folder",
        ),
        "a runs dir that cannot be written": (
            ["--study", str(good_path), "--runs-dir", "/proc/llc-runs"],
            "cannot write to runs dir",
        ),
        "an unknown backend": (["--study", str(good_path), *runs, "--backend", "lokal"], "unknown backend"),
    }


BAD_INPUTS = [
    "no samplers", "no problems", "a device that is not here", "a study that does not exist",
    "a runs dir that is a file", "a runs dir that cannot be written", "an unknown backend",
]  # fmt: skip


@pytest.mark.parametrize("entry", ["flows/sweep.py", "llc sweep"])
@pytest.mark.parametrize("what", BAD_INPUTS)
def test_bad_input_is_one_line_and_exit_2_before_prefect_starts(
    tmp_path: Path, fresh_prefect_home: Path, entry: str, what: str
) -> None:
    if what == "a device that is not here":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: device=cuda is available")
    argv, expected = _bad_studies(tmp_path)[what]
    prefix = SWEEP if entry == "flows/sweep.py" else [*LLC, "sweep"]
    done = command([*prefix, *argv], fresh_prefect_home)
    out, err = done.communicate(timeout=60)
    assert done.returncode == 2, err
    assert err.startswith("error:") and expected in err and "Traceback" not in err, err
    assert out == ""
    assert not (tmp_path / "runs").exists()  # nothing written
    assert not list(fresh_prefect_home.rglob("*"))  # no server started, no Prefect database made


def test_llc_run_refuses_a_missing_device_and_a_file_as_runs_dir_before_writing(
    tmp_path: Path, fresh_prefect_home: Path
) -> None:
    import torch

    (tmp_path / "a-file").write_text("x")
    cases = [(["--runs-dir", str(tmp_path / "a-file")], "is a file, not a folder")]
    if not torch.cuda.is_available():
        cases.append((["--runs-dir", str(tmp_path / "runs"), "--set", "device=cuda"], "is not available"))
    for flags, expected in cases:
        done = command([*LLC, "run", "--sampler", "sgld", *flags], fresh_prefect_home)
        _, err = done.communicate(timeout=120)
        assert done.returncode == 2 and expected in err and "Traceback" not in err, err
    assert not (tmp_path / "runs").exists()


def test_llc_run_whose_chains_all_diverged_exits_1_saying_what_to_change(
    tmp_path: Path, fresh_prefect_home: Path
) -> None:
    flags = ["--set", "step_size=10", "--set", "steps=50", "--set", "warmup=0", "--set", "erm_steps=50"]
    done = command([*LLC, "run", "--sampler", "sgld", "--runs-dir", str(tmp_path / "runs"), *flags],
                   fresh_prefect_home)  # fmt: skip
    _, err = done.communicate(timeout=300)
    assert done.returncode == 1, err
    assert "diverged" in err and "step_size=" in err and "Traceback" not in err, err
