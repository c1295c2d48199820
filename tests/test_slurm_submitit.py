"""The contract between the SLURM backend and submitit's private members, without a cluster: recorded
sacct and squeue output (as SLURM prints it for the commands the watcher runs) read through
llc.backends.slurm.submitit_adapter, the sbatch script the backend's `sbatch --test-only` checks, and
reading an ended job's result. A submitit upgrade that changes any of these fails here first."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from slurm_fixtures import probe_study

from llc.backends.slurm.backend import SlurmBackend
from llc.backends.slurm.submitit_adapter import SlurmJob, Watcher, base_state, outcome, read_result
from llc.sweeps.plan import plan_sweep

# `sacct -o JobID,State,NodeList --parsable2 -j 4242 -j 4250` while array 4242 (4 elements, at most 2
# running) has one element running, one done and two waiting, and job 4250 was cancelled by root.
SACCT_RUNNING = """\
JobID|State|NodeList
4242_[2-3%2]|PENDING|None assigned
4242_0|RUNNING|llc
4242_0.batch|RUNNING|llc
4242_0.extern|RUNNING|llc
4242_1|COMPLETED|llc
4242_1.batch|COMPLETED|llc
4242_1.extern|COMPLETED|llc
4250|CANCELLED by 0|llc
4250.batch|CANCELLED|llc
4250.extern|COMPLETED|llc
"""
# The same array later: its time limit reached one element, memory another, and preemption the third.
SACCT_ENDED = """\
JobID|State|NodeList
4242_0|TIMEOUT|llc
4242_0.batch|CANCELLED|llc
4242_1|COMPLETED|llc
4242_2|OUT_OF_MEMORY|llc
4242_2.batch|OUT_OF_MEMORY|llc
4242_3|PREEMPTED|llc
"""
# `squeue --array -h -t all -o %i|%T -j 4260` (squeue has no header with -h).
SQUEUE = "4260_0|RUNNING\n4260_1|PENDING\n"


class Slurm:
    """sacct, squeue and sbatch on PATH that print the recorded output given them and log their arguments."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        for name in ("sacct", "squeue", "sbatch"):
            (folder / f"{name}.out").write_text("")
            script = folder / name
            script.write_text(
                f'#!/bin/sh\necho "$*" >> {folder}/{name}.log\ncat > {folder}/{name}.in\n'
                f"cat {folder}/{name}.out\nexit $(cat {folder}/{name}.rc 2>/dev/null || echo 0)\n"
            )
            script.chmod(0o755)

    def answer(self, name: str, text: str, rc: int = 0) -> None:
        (self.folder / f"{name}.out").write_text(text)
        (self.folder / f"{name}.rc").write_text(str(rc))

    def given(self, name: str) -> str:
        """What the last call read from its input."""
        return (self.folder / f"{name}.in").read_text()

    def calls(self, name: str) -> list[str]:
        log = self.folder / f"{name}.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Slurm:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}:/usr/bin:/bin")
    return Slurm(folder)


def test_sacct_rows_give_each_array_element_its_state_and_steps_are_ignored(slurm: Slurm) -> None:
    slurm.answer("sacct", SACCT_RUNNING)
    jobs = ["4242_0", "4242_1", "4242_2", "4242_3", "4250"]
    states = Watcher(poll_s=0).states(jobs)
    assert states == {
        "4242_0": "RUNNING", "4242_1": "COMPLETED", "4242_2": "PENDING", "4242_3": "PENDING",
        "4250": "CANCELLED by 0",
    }  # fmt: skip
    assert base_state(states["4250"]) == "CANCELLED"
    (call,) = slurm.calls("sacct")
    assert call.startswith("-o JobID,State,NodeList --parsable2 ")
    assert sorted(call.split()[4::2]) == ["4242", "4250"] and call.split()[3::2] == ["-j", "-j"]
    assert slurm.calls("squeue") == []  # sacct knew every job


def test_ended_jobs_are_done_and_never_asked_about_again(slurm: Slurm) -> None:
    watcher = Watcher(poll_s=0)
    slurm.answer("sacct", SACCT_RUNNING)
    watcher.states(["4242_0", "4242_1", "4242_2", "4242_3"])
    assert [watcher.is_done(job, "cache") for job in ("4242_0", "4242_1", "4242_2")] == [False, True, False]
    slurm.answer("sacct", SACCT_ENDED)
    assert watcher.states(["4242_0", "4242_2", "4242_3"]) == {
        "4242_0": "TIMEOUT", "4242_2": "OUT_OF_MEMORY", "4242_3": "PREEMPTED"
    }  # fmt: skip
    # A preempted job may be requeued: it is not done, so it is still asked about; the others are not.
    assert [watcher.is_done(job, "cache") for job in ("4242_0", "4242_2", "4242_3")] == [True, True, False]
    slurm.answer("sacct", "JobID|State|NodeList\n4242_3|COMPLETED|llc\n")
    assert watcher.states(["4242_3"]) == {"4242_3": "COMPLETED"}
    asked = len(slurm.calls("sacct"))
    assert watcher.states(["4242_0", "4242_1", "4242_2", "4242_3"])["4242_2"] == "OUT_OF_MEMORY"
    assert len(slurm.calls("sacct")) == asked  # every job ended: sacct is not called


def test_jobs_sacct_does_not_know_take_their_state_from_squeue(slurm: Slurm) -> None:
    slurm.answer("sacct", "JobID|State|NodeList\n")  # accounting has not heard of the array yet
    slurm.answer("squeue", SQUEUE)
    assert Watcher(poll_s=0).states(["4260_0", "4260_1"]) == {"4260_0": "RUNNING", "4260_1": "PENDING"}
    assert slurm.calls("squeue") == ["--array -h -t all -o %i|%T -j 4260"]


def test_while_sacct_fails_states_come_from_squeue_with_one_warning(
    slurm: Slurm, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="llc.backends.slurm")
    watcher = Watcher(poll_s=0)
    slurm.answer("sacct", "sacct: error: Problem talking to the database: Connection refused\n", rc=1)
    slurm.answer("squeue", SQUEUE)
    assert watcher.states(["4260_0"]) == {"4260_0": "RUNNING"}
    assert watcher.states(["4260_1"]) == {"4260_1": "PENDING"}
    assert caplog.text.count("sacct fails: states come from squeue") == 1
    slurm.answer("sacct", "JobID|State|NodeList\n4260_0|COMPLETED|llc\n4260_1|RUNNING|llc\n")
    assert watcher.states(["4260_0", "4260_1"]) == {"4260_0": "COMPLETED", "4260_1": "RUNNING"}
    assert "sacct answers again" in caplog.text


def test_a_job_that_sacct_and_squeue_stop_knowing_reads_unknown_again(slurm: Slurm) -> None:
    """submitit's watcher keeps a job's last state forever; ours forgets a job that neither sacct nor
    squeue reports any longer, so that it reads UNKNOWN and is declared lost after lost_after_s instead
    of waited on as RUNNING."""
    watcher = Watcher(poll_s=0)
    slurm.answer("sacct", "JobID|State|NodeList\n4242|RUNNING|llc\n")
    assert watcher.states(["4242"]) == {"4242": "RUNNING"}
    slurm.answer("sacct", "JobID|State|NodeList\n")  # accounting lost it, and squeue's MinJobAge has passed
    assert watcher.states(["4242"]) == {"4242": "UNKNOWN"}
    slurm.answer("squeue", "4242|COMPLETING\n")
    assert watcher.states(["4242"]) == {"4242": "COMPLETING"}


def test_the_sbatch_script_carries_the_shape_the_backend_checks(tmp_path: Path, slurm: Slurm) -> None:
    """What `sbatch --test-only` is given: the array throttled to max_parallel, the resources, the
    thread settings before srun, and the logs in the session's folder."""
    cells = plan_sweep(probe_study(tmp_path / "markers", [{"name": "a"}, {"name": "b"}, {"name": "c"}])).cells
    options = {"partition": "debug", "account": "llc", "mem_gb": 2, "gpus": 1, "sbatch": {"exclude": "n9"}}
    backend = SlurmBackend(max_parallel=2, threads_per_cell=3, **options)
    folder = backend._folder(tmp_path / "runs")
    backend._check_shape(folder, backend._parameters(cells[0], timeout_s=300), len(cells))
    assert slurm.calls("sbatch") == ["--test-only"]
    lines = slurm.given("sbatch").splitlines()
    assert lines[0] == "#!/bin/bash"
    for piece in (
        "#SBATCH --array=0-2%2", f"#SBATCH --job-name={backend.job_name}", "#SBATCH --time=6",
        "#SBATCH --partition=debug", "#SBATCH --account=llc", "#SBATCH --mem=2048MB",
        "#SBATCH --gpus-per-node=1", "#SBATCH --exclude=n9", "#SBATCH --signal=USR2@90",
        f"#SBATCH --output={folder}/%A_%a_0_log.out", "export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3",
    ):  # fmt: skip
        assert piece in lines, piece
    assert lines.index("export OMP_NUM_THREADS=3 MKL_NUM_THREADS=3") < next(
        i for i, line in enumerate(lines) if line.startswith("srun")
    )


def test_an_ended_jobs_result_is_read_and_a_missing_one_waits_only_the_grace(
    tmp_path: Path, slurm: Slurm
) -> None:
    from submitit.core.utils import cloudpickle_dump  # how a job writes its result; after the adapter

    slurm.answer("sacct", "JobID|State|NodeList\n4242_1|COMPLETED|llc\n4242_2|FAILED|llc\n")
    done, failed = SlurmJob(tmp_path, "4242_1"), SlurmJob(tmp_path, "4242_2")
    for job in (done, failed):
        job.watcher = Watcher(poll_s=0)
    cloudpickle_dump(("success", {"llc": 1.5}), done.paths.result_pickle)
    assert outcome(done, grace_s=0) == ("success", {"llc": 1.5})
    assert read_result(done.paths.result_pickle) == ("success", {"llc": 1.5})
    started = time.monotonic()
    assert outcome(failed, grace_s=0) is None
    assert time.monotonic() - started < 5  # submitit's own wait for a result file is 15 s
