"""Full-batch HMC with a leapfrog integrator and a Metropolis correction, per chain.

The step size is tuned by dual averaging during warm-up towards `target_accept`, then fixed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llc.model.posterior import LocalizedPosterior
from llc.samplers.adaptation import DualAveraging
from llc.samplers.base import FullBatchKernel, StepInfo
from llc.samplers.registry import Sampling

DIVERGENCE_ENERGY = 1000.0


@dataclass
class HMCState:
    w: torch.Tensor
    loss: torch.Tensor
    potential: torch.Tensor
    grad: torch.Tensor
    step_size: torch.Tensor  # [chains, 1]
    gen: torch.Generator  # momenta and acceptance draws
    adaptation: DualAveraging | None = None  # the step size's tuning, while in warm-up


class HMC(FullBatchKernel):
    def __init__(
        self, posterior: LocalizedPosterior, step_size: float, n_leapfrog: int, target_accept: float
    ) -> None:
        self.posterior = posterior
        self.n_leapfrog = n_leapfrog
        self.grad_evals_per_step = n_leapfrog
        self.initial_step = step_size
        self.target_accept = target_accept

    @classmethod
    def from_sampling(cls, posterior: LocalizedPosterior, sampling: Sampling) -> HMC:
        n_leapfrog, target_accept = sampling.option("n_leapfrog"), sampling.option("target_accept")
        return cls(posterior, sampling.step_size, n_leapfrog, target_accept)

    def init(self, w: torch.Tensor, gen: torch.Generator) -> HMCState:
        w = w.clone()
        loss, grad = self.posterior.loss_and_grad(w)
        step = torch.full((w.shape[0], 1), self.initial_step, dtype=w.dtype, device=w.device)
        return HMCState(w, loss, self.posterior.potential(w, loss), grad, step, gen)

    def step(self, state: HMCState, tune: bool) -> tuple[HMCState, StepInfo]:
        if tune and state.adaptation is None:
            state.adaptation = DualAveraging(state.step_size, self.target_accept)
        if not tune and state.adaptation is not None:
            state.step_size = state.adaptation.final
            state.adaptation = None
        eps, gen = state.step_size, state.gen
        # Restricted: momenta only along the chain's part, so the kinetic energy is the part's.
        p = self.posterior.masked(
            torch.randn(state.w.shape, generator=gen, device=state.w.device, dtype=state.w.dtype)
        )
        h0 = state.potential + 0.5 * p.square().sum(dim=1)
        w, grad = state.w.clone(), state.grad
        p = p - 0.5 * eps * grad
        for i in range(self.n_leapfrog):
            w = w + eps * p
            loss, grad = self.posterior.loss_and_grad(w)
            if i < self.n_leapfrog - 1:
                p = p - eps * grad
        p = p - 0.5 * eps * grad
        potential = self.posterior.potential(w, loss)
        h1 = potential + 0.5 * p.square().sum(dim=1)
        log_ratio = torch.nan_to_num(h0 - h1, nan=-torch.inf)
        accept_prob = torch.exp(log_ratio.clamp(max=0.0))
        accept = torch.rand(accept_prob.shape, generator=gen, device=w.device, dtype=w.dtype) < accept_prob
        keep = accept.unsqueeze(1)
        state.w = torch.where(keep, w, state.w)
        state.grad = torch.where(keep, grad, state.grad)
        state.loss = torch.where(accept, loss, state.loss)
        state.potential = torch.where(accept, potential, state.potential)
        if tune and state.adaptation is not None:
            state.step_size = state.adaptation.update(accept_prob.unsqueeze(1))
        stats = {
            "acceptance_rate": accept_prob,
            # The Hamiltonian of the state kept, with the momentum it was proposed with or started from.
            "energy": torch.where(accept, h1, h0),
            "step_size": eps[:, 0],
            "diverging": ~(h1 - h0 < DIVERGENCE_ENERGY),
        }
        return state, StepInfo(state.loss, stats)
