"""MCMC kernels on a [chains, d] state, and the driver that runs them."""

from llc.samplers.base import BlockedKernel, Kernel, StepInfo
from llc.samplers.hmc import HMC
from llc.samplers.mclmc import MCLMC
from llc.samplers.sghmc import SGHMC
from llc.samplers.sgld import SGLD

KERNELS: dict[str, type[Kernel] | type[BlockedKernel]] = {
    "sgld": SGLD, "sghmc": SGHMC, "hmc": HMC, "mclmc": MCLMC
}  # fmt: skip

__all__ = ["HMC", "KERNELS", "MCLMC", "SGHMC", "SGLD", "BlockedKernel", "Kernel", "StepInfo"]
