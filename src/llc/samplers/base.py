"""What every kernel offers the driver: init a state, then take steps (one per call, or several
for blocked kernels), tuning during warm-up."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from llc.config import RunConfig
from llc.posterior import LocalizedPosterior


@dataclass
class StepInfo:
    """What one step reports per chain: the loss at the recorded point, and sample statistics."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class _KernelBase(Protocol):
    #: gradient evaluations per chain per step (each on the kernel's batch)
    grad_evals_per_step: int
    #: whether the recorded loss is a minibatch estimate (else the full-data loss)
    minibatch: bool

    def __init__(self, posterior: LocalizedPosterior, config: RunConfig) -> None: ...

    def init(self, w: torch.Tensor, gen: torch.Generator) -> Any: ...

    def position(self, state: Any) -> torch.Tensor: ...


class Kernel(_KernelBase, Protocol):
    """A kernel that steps all chains at once, one step per call."""

    def step(self, state: Any, gen: torch.Generator, tune: bool) -> tuple[Any, StepInfo]: ...


class Recorder(Protocol):
    """What a kernel that runs several steps at once (`BlockedKernel.advance`) reports, per block of
    chains (`rows`) and step `j` of the call: the position its draw is recorded at (a minibatch
    kernel's is where the step starts), and the draw's loss."""

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None: ...

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None: ...


class BlockedKernel(_KernelBase, Protocol):
    """A minibatch kernel whose chains advance in independent blocks (blocks.py): it runs `count`
    steps in one call, each core its own blocks, and reports through `recorder` as it goes."""

    def advance(self, state: Any, count: int, tune: bool, recorder: Recorder) -> Any: ...


class StepTunable(Protocol):
    """A minibatch kernel whose step `step_size=auto` sets in warm-up (samplers/step_search.py)."""

    step_size: float  # the kernel's own step parameter (SGLD's ε, SGHMC's η)

    def langevin_proposal(self, state: Any) -> tuple[float, torch.Tensor | None]:
        """The full-batch Langevin proposal a step amounts to: its step and diagonal preconditioner."""
        ...

    def restart(self, state: Any, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, their auxiliary state reset."""
        ...

    def position(self, state: Any) -> torch.Tensor: ...
