"""Checkpoints: a run in progress (`Run`, which holds the kernel's state) saved every few seconds and
loaded back, so that an interrupted run resumes with the same random streams and ends as an
uninterrupted one."""

from __future__ import annotations

import io
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from llc.rundir import atomic_write
from llc.samplers.step_search import StepSearch
from llc.samplers.trace import Records


@dataclass(frozen=True)
class Checkpointing:
    """Save the sampler's progress to `path` every `every_s` seconds; resume from it when present."""

    path: Path
    every_s: float = 60.0


@dataclass
class Run:
    """A run in progress, and exactly what its checkpoint holds."""

    t: int  # steps taken, warm-up included
    state: Any  # the kernel's state (samplers/base.py)
    records: Records
    eval_gen: torch.Generator  # the MALA check's and the step search's random numbers
    search: StepSearch | None  # step_size=auto's progress
    warmup_s: float = 0.0
    sampling_s: float = 0.0
    steps: int | None = None  # steps=auto: the steps after warm-up once the chains were extended


class Saver:
    """Saves a run every `every_s` seconds (atomically), and loads it back."""

    def __init__(self, checkpoint: Checkpointing) -> None:
        self.path, self.every_s = checkpoint.path, checkpoint.every_s
        self.last = time.perf_counter()

    def save_if_due(self, run: Run) -> None:
        if time.perf_counter() - self.last < self.every_s:
            return
        buffer = io.BytesIO()
        torch.save(run, buffer)
        atomic_write(self.path, buffer.getvalue())
        self.last = time.perf_counter()

    def load(self, device: torch.device) -> Run | None:
        """The saved run, or None when there is none or it cannot be read (then sampling starts over)."""
        if not self.path.exists():
            return None
        try:  # our own file, never foreign input
            saved = torch.load(self.path, weights_only=False, map_location=device)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
            saved = None
        if not isinstance(saved, Run):
            self.path.unlink(missing_ok=True)
            return None
        return saved
