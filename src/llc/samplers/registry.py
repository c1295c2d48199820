"""Every sampler, declared once: its kernel, its own parameters, whether it steps on minibatches, its
default step, and the diagnostics it offers. The config's choices, defaults and cross-field rules, the
CLI and the kernel's construction all read this table (after BlackJAX's top-level registration).

Nothing here imports torch: the config, which a light worker plans studies with, reads it. The kernel is
named as `module:Class` and imported when a run builds it (build.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any


def _never(options: Mapping[str, Any]) -> bool:
    return False


@dataclass(frozen=True)
class SamplerSpec:
    name: str
    kernel: str  # "module:Class" of its Kernel (base.py's protocol)
    summary: str
    minibatch: bool  # steps on minibatches: batch_size applies, and step_size=auto can search the step
    default_step: float  # when none is given; HMC and MCLMC tune theirs from it in warm-up
    options: tuple[str, ...] = ()  # the run keys it reads besides the step (its parameters)
    # Whether compiling compiles the whole step as one call (else the driver compiles the gradient alone).
    fuses: Callable[[Mapping[str, Any]], bool] = _never
    # The Metropolis check of the full-batch Langevin proposal one step amounts to (the kernel's
    # `langevin_proposal`), recorded every eval_every steps.
    mala_check: bool = False


SAMPLERS: dict[str, SamplerSpec] = {
    spec.name: spec
    for spec in (
        SamplerSpec(
            "sgld", "llc.samplers.sgld:SGLD",
            "stochastic gradient Langevin dynamics, optionally preconditioned",
            minibatch=True, default_step=1e-4, options=("precond",),
            fuses=lambda options: options["precond"] == "none", mala_check=True,
        ),
        SamplerSpec(
            "sghmc", "llc.samplers.sghmc:SGHMC", "stochastic gradient Hamiltonian Monte Carlo with friction",
            minibatch=True, default_step=1e-5, options=("friction",), fuses=lambda options: True,
        ),
        SamplerSpec(
            "hmc", "llc.samplers.hmc:HMC", "full-batch HMC, its step tuned in warm-up",
            minibatch=False, default_step=1e-3, options=("n_leapfrog", "target_accept"),
        ),
        SamplerSpec(
            "mclmc", "llc.samplers.mclmc:MCLMC", "microcanonical Langevin Monte Carlo, tuned in warm-up",
            minibatch=False, default_step=1e-2,
        ),
    )
}  # fmt: skip

STREAM = 4  # chains per random stream (blocks.py): runs split across devices on whole streams

MINIBATCH_SAMPLERS = tuple(name for name, spec in SAMPLERS.items() if spec.minibatch)


@dataclass(frozen=True)
class Sampling:
    """What the driver needs of a run, passed explicitly (the run layer makes it from the config)."""

    sampler: str
    chains: int
    steps: int
    warmup: int
    thin: int
    eval_every: int
    projections: int
    seed: int
    threads: int
    compile: bool | str  # True, False or "auto" (the driver decides "auto" before it builds the kernel)
    gpu_mode: str
    step_size: float  # the step, or where step_size=auto starts its search
    step_size_auto: bool = False
    friction_auto: bool = False
    options: Mapping[str, Any] | None = None  # the sampler's own parameters (SamplerSpec.options)
    # (first chain, chains of the whole run) when these `chains` are one device's share of a run split
    # across devices (run/devices.py): they draw the random numbers those chains draw in the whole run.
    share: tuple[int, int] | None = None
    # The chains are this many parts of chains/parts consecutive chains each (a model's parts as one run,
    # run/parts.py): step_size=auto searches a step per part.
    parts: int = 1

    @property
    def spec(self) -> SamplerSpec:
        return SAMPLERS[self.sampler]

    def option(self, key: str) -> Any:
        assert self.options is not None and key in self.spec.options, key
        return self.options[key]

    @property
    def fuses(self) -> bool:
        """Whether compiling this run's kernel compiles its whole step (else only the gradient)."""
        return self.spec.fuses(self.options or {})
