"""MCMC kernels on a [chains, d] state (base.py declares their protocol), and the driver that runs them."""

from llc.samplers.base import Kernel, StepInfo
from llc.samplers.hmc import HMC
from llc.samplers.mclmc import MCLMC
from llc.samplers.sghmc import SGHMC
from llc.samplers.sgld import SGLD

KERNELS: dict[str, type] = {"sgld": SGLD, "sghmc": SGHMC, "hmc": HMC, "mclmc": MCLMC}

__all__ = ["HMC", "KERNELS", "MCLMC", "SGHMC", "SGLD", "Kernel", "StepInfo"]
