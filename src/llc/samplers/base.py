"""The kernel protocol: what every sampler offers the driver (driver.py), after BlackJAX's `base.py`.

A kernel is built from its own parameters (step size, friction, leapfrog steps, ...) and holds nothing
that changes while it runs. Everything that does — positions, momenta, step sizes being tuned, the
tuning's statistics, the chains' random generators — lives in the kernel's state, a dataclass that
`init` makes and `advance` updates (in place, for speed) and returns. That state is exactly what a
checkpoint holds: a resumed run gets it back and goes on with the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

import torch

if TYPE_CHECKING:
    from llc.model.posterior import LocalizedPosterior
    from llc.samplers.registry import Sampling

State = TypeVar("State")
# A minibatch kernel's step (or friction): one number for all chains, or one per chain [chains, 1] where
# a model's parts run as one run with a step searched per part (step_search.StepSearch, run/parts.py).
PerChain = float | torch.Tensor


def rows_of(value: PerChain, rows: slice) -> PerChain:
    """The value for the chains at `rows`: a number as it is, a per-chain tensor's rows."""
    return value if isinstance(value, float | int) else value[rows]


@dataclass
class StepInfo:
    """What one step reports per chain: the loss at the recorded point, and sample statistics."""

    loss: torch.Tensor
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


class Recorder(Protocol):
    """Where `advance` reports step `j` of its call, for the chains at `rows`: the position the draw
    is recorded at (a minibatch kernel's is where the step starts), the draw's loss, its statistics."""

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None: ...

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None: ...

    def stats(self, j: int, stats: dict[str, torch.Tensor]) -> None: ...


class Kernel(Protocol[State]):
    """A sampler on a [chains, d] state: `init` at w*, `prepare` once before stepping (also after a
    resume), then `advance` several steps per call, tuning its own parameters while `tune`."""

    #: gradient evaluations per chain per step (each on the kernel's batch)
    grad_evals_per_step: int
    #: whether the recorded loss is a minibatch estimate (else the full-data loss)
    minibatch: bool
    #: whether the whole step runs as one compiled call
    fused: bool

    @classmethod
    def from_sampling(cls, posterior: LocalizedPosterior, sampling: Sampling) -> Kernel[State]:
        """The kernel with a run's parameters: its step and its own options (registry.py)."""
        ...

    def init(self, w: torch.Tensor, gen: torch.Generator) -> State:
        """The state of chains at positions w [chains, d], their random numbers drawn from `gen`."""
        ...

    def prepare(self, state: State, fall_back: bool) -> State:
        """Set up the machinery for this machine (cores, compiled steps); nothing random is drawn."""
        ...

    def advance(self, state: State, count: int, tune: bool, recorder: Recorder) -> State:
        """Take `count` steps of every chain, reporting each through `recorder`."""
        ...

    def position(self, state: State) -> torch.Tensor: ...

    @property
    def torch_threads(self) -> int:
        """torch threads for its calls: 0 (all) unless the kernel spreads its chains over the cores itself."""
        ...


class LangevinKernel(Kernel[State], Protocol):
    """A kernel whose step is a Langevin proposal, checked by Metropolis every eval_every steps (SGLD;
    the registry's `mala_check` says which)."""

    def langevin_proposal(self, state: State) -> tuple[PerChain, torch.Tensor | None]:
        """The full-batch proposal one step amounts to: its step ε and its diagonal preconditioner G."""
        ...


class TunableState(Protocol):
    """The state of a kernel whose step `step_size=auto` sets in warm-up (step_search.py)."""

    w: torch.Tensor
    step_size: PerChain  # the kernel's own step parameter (SGLD's ε, SGHMC's η)


class FrictionState(TunableState, Protocol):
    """The state of a kernel whose friction `friction=auto` sets in warm-up (SGHMC)."""

    friction: PerChain


class StepTunable(Protocol):
    """A minibatch kernel whose step `step_size=auto` sets in warm-up (samplers/step_search.py)."""

    def curvature_metric(self, state: TunableState) -> torch.Tensor | None:
        """The diagonal metric G that the curvature h its step sees is measured in (None: the identity)."""
        ...

    def set_step(self, state: TunableState, step: PerChain) -> None:
        """Make the kernel's step `step`: the ε (SGLD) or η (SGHMC) whose product with a curvature h sets
        the step's bias (about ε·h/4) and stability (up to ε·h = 2)."""
        ...

    def heating_per_noise(self, state: TunableState) -> PerChain | None:
        """How much the LLC reads high per unit of tr(V), the minibatch gradient's total noise variance
        (step_search.minibatch_heating); None where it has no closed form."""
        ...

    def position(self, state: TunableState) -> torch.Tensor: ...

    def restart(self, state: TunableState, rows: torch.Tensor) -> None:
        """Put the chains at `rows` back at w*, their auxiliary state reset."""
        ...


class FullBatchKernel:
    """What HMC and MCLMC share: all chains in one batched step per call of `step`, on the full data."""

    minibatch = False
    fused = False
    torch_threads = 0

    def step(self, state: State, tune: bool) -> tuple[State, StepInfo]:
        raise NotImplementedError

    def prepare(self, state: State, fall_back: bool) -> State:
        return state

    def position(self, state: State) -> torch.Tensor:
        return state.w  # type: ignore[attr-defined]

    def advance(self, state: State, count: int, tune: bool, recorder: Recorder) -> State:
        everyone = slice(None)
        for j in range(count):
            state, info = self.step(state, tune)
            recorder.position(j, everyone, self.position(state))
            recorder.loss(j, everyone, info.loss)
            recorder.stats(j, info.stats)
        return state
