"""The refined LLC: of a model's parts (weight-refined, `restrict=`) and on other data (`loss_data=`).

P parts × C chains run as one run of P·C chains, chain p·C + c carrying part p's mask (posterior.py),
with γ per part, and with step_size=auto (sgld, sghmc) a step (and friction) searched per part in one
batched search (samplers/step_search.py). Where chains run one at a time (gpu_mode=sequential), the
parts run one after another instead. Each part's slice of the trace then gets a plain run's metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from llc.config import RunConfig
from llc.errors import ConfigError
from llc.model.posterior import Batch, LocalizedPosterior
from llc.modules.heads import heads
from llc.modules.model import ModuleModel
from llc.modules.parts import Part, Restriction, resolve
from llc.problems import Problem
from llc.run import localization
from llc.samplers.checkpoint import Checkpointing
from llc.samplers.driver import Progress, sample
from llc.samplers.registry import Sampling
from llc.samplers.trace import Trace, chains_of

# The seed offset of the k-th part's random stream where parts run one after another (the first part
# uses the run's own, so that restrict="*" draws what the plain run draws).
PART_SEED_STRIDE = 104_723


@dataclass(frozen=True)
class Refinement:
    """What refines a run: its parts (None: the whole model), whether one was asked for as such (a
    glob or callable, not a mapping), and loss_data's points (None: the training data)."""

    parts: list[Part] | None = None
    single: bool = False
    loss_data: Batch | None = None


def from_config(config: RunConfig, problem: Problem) -> Refinement:
    """The parts a run's `restrict` key names in its module ("heads": llc.heads of the model)."""
    if config.restrict is None:
        return Refinement()
    if not isinstance(problem.model, ModuleModel):
        raise ConfigError("restrict applies to problem module (your own model)")
    module = problem.model.module
    restrict: Restriction = heads(module) if config.restrict == "heads" else config.restrict
    if config.restrict == "heads" and not restrict:
        raise ConfigError(
            "restrict: heads found no attention in the model (nn.MultiheadAttention); name the "
            "projections with llc.heads(model, projections=...), or give globs"
        )
    parts, single = resolve(module, restrict)
    return Refinement(parts, single)


def check(parts: list[Part], sampler: str) -> None:
    """What no part may be: MCLMC's momentum needs two dimensions to move in."""
    if sampler == "mclmc":
        small = next((p for p in parts if p.n_params < 2), None)
        if small is not None:
            raise ConfigError(f"restrict {small.name!r}: mclmc needs a part of 2 parameters or more")


def batched(sampling: Sampling) -> bool:
    """Whether the parts run as one run: everywhere but chain by chain (gpu_mode=sequential)."""
    return sampling.gpu_mode != "sequential"


def sample_parts(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    parts: list[Part],
    gammas: list[float],
    loss0: float,
    gen: torch.Generator,
    progress: Progress | None = None,
    checkpoint: Checkpointing | None = None,
) -> list[Trace]:
    """The trace of every part, C = sampling.chains chains each, as one run of P·C chains where the
    kernel allows (`batched`), else one part after another."""
    chains, like = sampling.chains, posterior.w_star
    if batched(sampling):
        mask = torch.stack([p.mask for p in parts]).to(like).repeat_interleave(chains, dim=0)
        gamma: float | torch.Tensor = gammas[0]
        if len(set(gammas)) > 1:
            gamma = torch.tensor(gammas).to(like).repeat_interleave(chains).unsqueeze(1)
        run = replace(posterior, mask=mask, gamma=gamma)
        together = replace(sampling, chains=len(parts) * chains, parts=len(parts))
        trace = sample(together, run, loss0, gen, progress, checkpoint)
        return [chains_of(trace, slice(k * chains, (k + 1) * chains), k) for k in range(len(parts))]
    traces = []
    for k, (part, gamma_k) in enumerate(zip(parts, gammas, strict=True)):
        part_gen = gen
        if k:
            part_gen = torch.Generator(device=gen.device).manual_seed(
                gen.initial_seed() + PART_SEED_STRIDE * k
            )
        run = replace(posterior, mask=part.mask.to(like).unsqueeze(0), gamma=gamma_k)
        traces.append(sample(sampling, run, loss0, part_gen, _part_progress(progress, k, len(parts))))
    return traces


def decide_gammas(
    config: RunConfig, posterior: LocalizedPosterior, parts: list[Part], grad: torch.Tensor | None
) -> tuple[list[float], list[localization.Localization | None]]:
    """γ per part: the config's, or gamma=auto's decision from the part's share of the full-data
    gradient at w* (`grad` [d], given with gamma=auto)."""
    if config.gamma != "auto":
        return [float(config.gamma)] * len(parts), [None] * len(parts)
    assert grad is not None
    decided: list[localization.Localization | None] = []
    for part in parts:
        mask = part.mask.to(posterior.w_star)
        decided.append(localization.decide(grad, posterior.w_star, posterior.nbeta, mask))
    return [d.gamma for d in decided if d is not None], decided


def _part_progress(progress: Progress | None, k: int, count: int) -> Progress | None:
    if progress is None:
        return None
    return lambda t, total: progress(k * total + t, count * total)
