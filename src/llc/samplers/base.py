"""What every kernel offers the driver: init a state, take a step, tune during warm-up."""

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


class Kernel(Protocol):
    #: gradient evaluations per chain per step (each on the kernel's batch)
    grad_evals_per_step: int
    #: whether the recorded loss is a minibatch estimate (else the full-data loss)
    minibatch: bool

    def __init__(self, posterior: LocalizedPosterior, config: RunConfig) -> None: ...

    def init(self, w: torch.Tensor, gen: torch.Generator) -> Any: ...

    def step(self, state: Any, gen: torch.Generator, tune: bool) -> tuple[Any, StepInfo]: ...

    def position(self, state: Any) -> torch.Tensor: ...
