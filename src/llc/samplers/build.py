"""A run's kernel from its sampling parameters and the sampler's declaration (registry.py)."""

from __future__ import annotations

import importlib
from typing import Any

from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import Kernel
from llc.samplers.registry import SAMPLERS, Sampling


def build_kernel(sampling: Sampling, posterior: LocalizedPosterior) -> Kernel[Any]:
    """The kernel `sampling.sampler` names, with its parameters (`compile` already a boolean)."""
    kernel: Any = kernel_class(sampling.sampler)
    return kernel.from_sampling(posterior, sampling)


def kernel_class(sampler: str) -> type:
    """The Kernel class that the registry names for `sampler`."""
    module, _, name = SAMPLERS[sampler].kernel.partition(":")
    return getattr(importlib.import_module(module), name)
