"""A run's kernel from its config: the one place that reads `RunConfig` for the kernels' parameters."""

from __future__ import annotations

from typing import Any

from llc.config import RunConfig
from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import Kernel
from llc.samplers.hmc import HMC
from llc.samplers.mclmc import MCLMC
from llc.samplers.sghmc import SGHMC
from llc.samplers.sgld import SGLD


def build_kernel(config: RunConfig, posterior: LocalizedPosterior) -> Kernel[Any]:
    """The kernel `config.sampler` names, with the config's parameters (`compile` already a boolean)."""
    step, compile = config.resolved_step_size, bool(config.compile)
    if config.sampler == "sgld":
        return SGLD(posterior, step, config.precond, compile)
    if config.sampler == "sghmc":
        return SGHMC(posterior, step, config.resolved_friction, compile)
    if config.sampler == "hmc":
        return HMC(posterior, step, config.n_leapfrog, config.target_accept)
    return MCLMC(posterior, step, config.warmup)


def fuses(config: RunConfig) -> bool:
    """Whether compiling the config's kernel compiles its whole step (else only the gradient)."""
    return config.sampler == "sghmc" or (config.sampler == "sgld" and SGLD.fuses(config.precond))
