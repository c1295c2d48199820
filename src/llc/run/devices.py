"""One run's chains split across devices (`devices=[cpu, cpu]`, `[cuda:0, cuda:1]`): one share each.

The chains are cut on whole random streams (samplers/blocks.py), and each share draws from its streams
as seeded in the whole run, so on the CPU the split run's draws are the one-device run's. The first
share runs in this process; each other share in a fresh Python process (spawned, never forked: torch
and CUDA do not survive a fork), which receives the model, data and sampling settings by cloudpickle
(so a model class defined in a notebook travels too) and hands back its trace. The traces are joined
in chain order into the run's one trace.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

import cloudpickle
import torch

from llc.config import RunConfig
from llc.errors import ConfigError
from llc.model.posterior import LocalizedPosterior
from llc.modules.model import ModuleModel
from llc.problems.build import Problem
from llc.run.parts import Refinement
from llc.samplers.driver import Progress, sample, step_work
from llc.samplers.registry import STREAM, Sampling
from llc.samplers.trace import Trace, concat
from llc.threads import threads_for


def check(config: RunConfig, problem: Problem, refinement: Refinement) -> None:
    """The devices exist here, the data is in memory, the run is not refined, and the model and loss can
    travel to another process: else one ConfigError, before the run directory is written."""
    if not config.devices:
        return
    if problem.source is not None:
        raise ConfigError(
            "devices: streamed data (a DataLoader or Dataset) is read in this process only; pass the data "
            "as tensors, or leave devices out"
        )
    if refinement.parts is not None or refinement.loss_data is not None:
        raise ConfigError("devices: restrict and loss_data run on one device; leave devices out")
    model = problem.model
    for device in config.devices:
        if device == "cpu":
            continue
        if not torch.cuda.is_available():
            raise ConfigError(
                f"devices: {device} needs CUDA, which this machine lacks; use devices=[cpu, cpu] (processes) "
                "or leave devices out"
            )
        index = int(device.partition(":")[2] or torch.cuda.current_device())
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"devices: {device} is not here (this machine has cuda:0 to "
                f"cuda:{torch.cuda.device_count() - 1})"
            )
    if len(config.devices) > 1:
        try:
            cloudpickle.dumps(model)
        except Exception as exc:
            raise ConfigError(
                f"devices: the model or loss cannot be sent to another process ({type(exc).__name__}: "
                f"{exc}); make them picklable, or leave devices out"
            ) from None


@dataclass(frozen=True)
class _Share:
    """What one device's process needs to advance its chains."""

    device: str
    sampling: Sampling
    posterior: LocalizedPosterior
    loss0: float
    seed: int


def sample_on_devices(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    loss0: float,
    seed: int,
    devices: tuple[str, ...],
    progress: Progress | None = None,
) -> Trace:
    """The trace of `sampling.chains` chains, split in whole streams over `devices` (the first in this
    process, reporting `progress`), as one trace; `seed` seeds the whole run's generator."""
    parts = zip(devices, split(sampling.chains, len(devices)), strict=True)
    shares = [_share(sampling, posterior, loss0, seed, dev, first, n, devices) for dev, (first, n) in parts]
    with tempfile.TemporaryDirectory(prefix="llc-devices-") as scratch:
        started = [_start(share, Path(scratch) / str(i)) for i, share in enumerate(shares[1:])]
        try:
            traces = [_advance(shares[0], progress)]
        finally:
            traces += [_finish(*process) for process in started]
    joined = concat(traces)
    # The shares ran at once: the run took as long as its slowest share.
    return replace(
        joined,
        t_sampling_s=max(t.t_sampling_s for t in traces),
        t_warmup_s=max(t.t_warmup_s for t in traces),
    )


def split(chains: int, parts: int) -> list[tuple[int, int]]:
    """(first chain, chains) of each part: whole streams, as equal as can be, the larger parts first."""
    streams = chains // STREAM
    counts = [streams // parts + (i < streams % parts) for i in range(parts)]
    starts = [sum(counts[:i]) for i in range(parts)]
    return [(start * STREAM, count * STREAM) for start, count in zip(starts, counts, strict=True)]


def _share(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    loss0: float,
    seed: int,
    device: str,
    first: int,
    chains: int,
    devices: tuple[str, ...],
) -> _Share:
    part = replace(sampling, chains=chains, share=(first, sampling.chains))
    if sampling.threads == 0 and device == "cpu":  # the cores shared out between the CPU's processes
        cores = max(1, (os.cpu_count() or 1) // devices.count("cpu"))
        part = replace(part, threads=threads_for(0, step_work(part, posterior)) or cores)
    return _Share(device, part, posterior, loss0, seed)


def _advance(share: _Share, progress: Progress | None = None) -> Trace:
    """Sample the share's chains on its device (in whichever process this is)."""
    device = torch.device(share.device)
    posterior = share.posterior
    assert isinstance(posterior.model, ModuleModel)  # devices is for your own model (config.py)
    moved = LocalizedPosterior(
        posterior.model.to(device),
        posterior.x.to(device),
        posterior.y.to(device),
        posterior.w_star.to(device),
        posterior.nbeta,
        posterior.gamma,
        posterior.batch_size,
    )
    gen = torch.Generator(device=device).manual_seed(share.seed)
    return sample(share.sampling, moved, share.loss0, gen, progress)


def _start(share: _Share, folder: Path) -> tuple[subprocess.Popen, Path, str]:
    """A fresh Python process advancing `share`: it reads the share from a file and writes its trace to
    another (its own prints and warnings go to this process's terminal)."""
    folder.mkdir()
    (folder / "share.pkl").write_bytes(cloudpickle.dumps(share))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    command = [sys.executable, "-c", "from llc.run.devices import main; main()", str(folder)]
    return subprocess.Popen(command, env=env), folder, share.device


def _finish(process: subprocess.Popen, folder: Path, device: str) -> Trace:
    code = process.wait()
    result = folder / "trace.pkl"
    if code != 0 or not result.exists():
        raise RuntimeError(f"the process advancing the chains on {device} failed (exit code {code})")
    outcome = cloudpickle.loads(result.read_bytes())
    if isinstance(outcome, Trace):
        return outcome
    kind, message = outcome
    error = ConfigError if kind == "ConfigError" else RuntimeError
    raise error(f"{message} (in the process advancing the chains on {device})")


def main() -> None:
    """A share's process: `python -c 'from llc.run.devices import main; main()' FOLDER`."""
    folder = Path(sys.argv[1])
    try:
        outcome: object = _advance(cloudpickle.loads((folder / "share.pkl").read_bytes()))
    except Exception as exc:
        traceback.print_exc()
        outcome = (type(exc).__name__, f"{type(exc).__name__}: {exc}")
    (folder / "trace.pkl").write_bytes(cloudpickle.dumps(outcome))
