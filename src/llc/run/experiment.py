"""The LLC experiment: config -> problem -> ERM (shared per family) -> sampling -> run directory."""

from __future__ import annotations

import io
import logging
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import arviz as az
import numpy as np
import torch
from pydantic import BaseModel

from llc.config import RunConfig
from llc.errors import ConfigError
from llc.model import gram
from llc.model.network import MLP
from llc.model.posterior import LocalizedPosterior
from llc.model.streaming import StreamingPosterior, streamed_loss_and_grad
from llc.modules.model import ModuleModel
from llc.modules.parts import Part
from llc.problems import Problem, build_problem
from llc.problems.build import STREAM_SAMPLING, stream
from llc.problems.module import minibatch_size
from llc.problems.optimum import best_linear_loss, is_linear_network
from llc.run import devices, diagnostics, health, localization, parts, plots
from llc.run.allocator import ask_platform_now, keep_freed_memory
from llc.run.chain_length import ChainLength
from llc.run.erm import train
from llc.run.parts import Refinement
from llc.rundir import RunDir, atomic_write
from llc.samplers.checkpoint import Checkpointing
from llc.samplers.driver import Progress, sample
from llc.samplers.trace import Trace, concat
from llc.threads import cpu_threads, threads_for

log = logging.getLogger(__name__)


class Experiment(Protocol):
    """Anything a sweep can run: a pydantic config model and a run that writes into its directory."""

    config_model: type[BaseModel]

    def run(self, config: Any, run_dir: Path) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Measured:
    """One run's results in memory: metrics.json's values, the draws as ArviZ data, the known λ."""

    metrics: dict[str, Any]
    idata: az.InferenceData
    llc_true: float | None


@dataclass(frozen=True)
class RunResult:
    path: Path
    metrics: dict[str, Any]
    cached: bool


def resolve_device(config: RunConfig) -> torch.device:
    """The device a run uses: gpu_mode=off forces the CPU; auto picks CUDA when present."""
    if config.gpu_mode == "off" or config.device == "cpu":
        return torch.device("cpu")
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"device={config.device}: CUDA is not available here; set device=auto or cpu")
    return torch.device(config.device)


def run_llc(
    config: RunConfig,
    runs_dir: Path,
    skip: bool = True,
    progress: Progress | None = None,
    checkpoint_every_s: float | None = None,
    problem: Problem | None = None,
    refinement: Refinement | None = None,
) -> RunResult:
    """Run (or reuse, when skip and a complete result exists) one LLC estimate under runs_dir/<run_id>.

    With checkpoint_every_s, sampling saves its progress that often and a later call resumes from it.
    `problem` is the config's problem when already built (llc.estimate's model and data); `refinement`
    its parts and loss data when llc.estimate resolved them (else the config's `restrict`).
    """
    run_dir = RunDir(runs_dir, config.run_id)
    if skip and run_dir.is_complete():
        return RunResult(run_dir.path, run_dir.read_json("metrics.json"), cached=True)
    # A device this machine lacks, a model that cannot run on its data, or parts it does not have, are
    # refused before the directory exists.
    resolve_device(config)
    problem = problem or build_problem(config)
    refinement = refinement or parts.from_config(config, problem)
    devices.check(config, problem, refinement)
    if refinement.parts is not None:
        parts.check(refinement.parts, config.sampler)
    experiment = LLCExperiment(runs_dir / "families", checkpoint_every_s)
    metrics = experiment.run(config, run_dir.prepare(), progress, problem, refinement)
    run_dir.seal()
    return RunResult(run_dir.path, metrics, cached=False)


class LLCExperiment:
    """Estimate the LLC of one trained network with one sampler."""

    config_model = RunConfig

    def __init__(self, family_cache: Path | None = None, checkpoint_every_s: float | None = None) -> None:
        self.family_cache = family_cache
        self.checkpoint_every_s = checkpoint_every_s

    def run(
        self,
        config: RunConfig,
        run_dir: Path,
        progress: Progress | None = None,
        problem: Problem | None = None,
        refinement: Refinement | None = None,
    ) -> dict[str, Any]:
        out = RunDir(run_dir.parent, run_dir.name)
        out.write_json(
            "config.json", {"run_id": config.run_id, "family_id": config.family_id, **config.normalized()}
        )
        checkpoint = None
        if self.checkpoint_every_s is not None and config.gpu_mode != "sequential":
            checkpoint = Checkpointing(out.checkpoint, self.checkpoint_every_s)
        measured = self.measure(config, problem, progress, checkpoint, refinement)
        diagnostics.write_netcdf(measured.idata, run_dir / f"{config.sampler}.nc")
        out.write_json("metrics.json", measured.metrics)
        if len(measured.metrics.get("parts", ())) <= 1:  # several parts' chains: no one figure
            plots.draw_plots(measured.idata, run_dir, measured.llc_true, measured.metrics.get("flags", []))
        return measured.metrics

    def measure(
        self,
        config: RunConfig,
        problem: Problem | None = None,
        progress: Progress | None = None,
        checkpoint: Checkpointing | None = None,
        refinement: Refinement | None = None,
    ) -> Measured:
        """The run's metrics and draws, in memory: what `run` writes into its directory."""
        keep_freed_memory()
        ask_platform_now()
        device = resolve_device(config)
        problem = problem or build_problem(config)
        refinement = refinement or parts.from_config(config, problem)
        devices.check(config, problem, refinement)
        nbeta = config.nbeta_for(problem.n)
        # ERM is full-batch on one chain; sampling picks its own thread count.
        threads = (
            0 if device.type == "cuda" else threads_for(config.threads, problem.n * problem.model.n_params)
        )
        with cpu_threads(threads):
            t0 = time.perf_counter()
            w_star, loss0 = self._erm(config, problem)
            t_erm = time.perf_counter() - t0
        if isinstance(problem.model, ModuleModel):
            problem.model.to(device)
        x, y, w_star = problem.x.to(device), problem.y.to(device), w_star.to(device)
        eval_data = None
        if refinement.loss_data is not None:
            eval_data = (refinement.loss_data[0].to(device), refinement.loss_data[1].to(device))
        gamma_auto, grad_star = None, None
        if config.gamma == "auto":  # your own model's default: from the gradient at w*
            with cpu_threads(threads):
                grad_star = _full_gradient(problem, x, y, w_star)
            if refinement.parts is None:
                gamma_auto = localization.decide(grad_star, w_star, nbeta)
        # A restricted run with gamma=auto decides γ per part (parts.decide_gammas), not here.
        gamma = (
            gamma_auto.gamma
            if gamma_auto
            else localization.WEAK_GAMMA
            if config.gamma == "auto"
            else float(config.gamma)
        )
        batch_size = minibatch_size(config, problem.n, streamed=problem.source is not None)
        if problem.source is None:
            posterior = LocalizedPosterior(
                problem.model, x, y, w_star, nbeta, gamma, batch_size, eval_data=eval_data
            )
        else:
            posterior = StreamingPosterior(
                problem.model,
                x,
                y,
                w_star,
                nbeta,
                gamma,
                batch_size,
                eval_data=eval_data,
                source=problem.source,
            )
            if batch_size is None:
                log.warning(
                    "%s reads all %d points of the streamed data at every step, a chunk at a time: on data "
                    "that does not fit in memory expect it to be slow (sgld and sghmc step on minibatches)",
                    config.sampler,
                    problem.n,
                )
        full_batch = (posterior.batch_size or posterior.n) >= posterior.n
        if isinstance(problem.model, MLP) and gram.supports(problem.model) and full_batch:
            # Full-batch gradients of linear networks from second moments: exact and n times cheaper.
            posterior = replace(posterior, grad_fn=gram.GramLoss(problem.model, posterior.x, posterior.y))
        gen = torch.Generator(device=device).manual_seed(stream(config.seed, STREAM_SAMPLING).initial_seed())
        # loss_data: the LLC's loss is evaluated on those points, from their loss at w* (Wang et al. 2025).
        trace_loss0 = loss0 if eval_data is None else float(posterior.recorded_loss(w_star.unsqueeze(0))[0])
        attrs = {"run_id": config.run_id, "sampler": config.sampler, "nbeta": nbeta, "L0": trace_loss0}
        steps_reason = None
        if refinement.parts is None:
            if config.devices:  # one share of the chains per device (devices.py), without checkpoints
                seed, on = gen.initial_seed(), config.devices
                trace = devices.sample_on_devices(config.sampling, posterior, trace_loss0, seed, on, progress)
                steps_reason = "devices: the initial steps only"
            else:
                # steps=auto: the same chains continue while they have not filled, within the budget.
                chain_length = ChainLength(config.step_budget, gamma) if config.steps == "auto" else None
                more = chain_length.more if chain_length is not None else None
                trace = sample(config.sampling, posterior, trace_loss0, gen, progress, checkpoint, more)
                if chain_length is not None:
                    steps_reason = chain_length.reason or "gpu_mode=sequential: the initial steps only"
            metrics = build_metrics(config, problem, trace, loss0, t_erm, device, gamma)
            if gamma_auto is not None:
                metrics |= {"gamma_auto": gamma_auto.gamma, "gamma_reason": gamma_auto.reason}
        else:
            gammas, decided = parts.decide_gammas(config, posterior, refinement.parts, grad_star)
            if not parts.batched(config.sampling):
                checkpoint = None  # parts one after another: no resuming mid-way (docs/own-model.md)
            traces = parts.sample_parts(
                config.sampling, posterior, refinement.parts, gammas, trace_loss0, gen, progress, checkpoint
            )
            per_part = {
                part.name: _part_metrics(config, problem, trace, loss0, t_erm, device, g, auto, part)
                for part, trace, g, auto in zip(refinement.parts, traces, gammas, decided, strict=True)
            }
            metrics = _refined_metrics(per_part, problem.model.n_params)
            trace = concat(traces)
            attrs |= {"parts": ",".join(per_part), "chains_per_part": config.chains}
            steps_reason = "restrict: the initial steps only"
        metrics["steps_chosen"] = trace.steps
        if config.sampling.spec.minibatch:
            metrics["batch_size_used"] = batch_size or problem.n
        if config.steps == "auto":
            metrics["steps_reason"] = steps_reason
        if eval_data is not None:
            metrics["L0_loss_data"] = trace_loss0
        idata = diagnostics.to_inference_data(trace.llc, trace.loss, trace.w_proj, trace.stats or None, attrs)
        return Measured(metrics, idata, problem.llc_true)

    def _erm(self, config: RunConfig, problem: Problem) -> tuple[torch.Tensor, float]:
        """w* and L0, computed once per family and shared by every run of it."""
        if self.family_cache is None:
            return _trained_point(config, problem)
        path = self.family_cache / config.family_id / "erm.pt"
        if path.exists():
            try:
                saved = torch.load(path, weights_only=True)
                return saved["w_star"], float(saved["L0"])
            except (RuntimeError, KeyError, EOFError, OSError):
                pass  # a torn or foreign file: train again and overwrite it
        w_star, loss0 = _trained_point(config, problem)
        buffer = io.BytesIO()
        torch.save({"w_star": w_star, "L0": loss0}, buffer)
        atomic_write(path, buffer.getvalue())
        return w_star, loss0


def _trained_point(config: RunConfig, problem: Problem) -> tuple[torch.Tensor, float]:
    """w* and L0: a module problem's own weights, else ERM from the config's seed."""
    if problem.w_star is None:
        return train(problem, config.erm_steps, config.erm_lr, config.seed)
    loss0 = problem.full_loss(problem.w_star.unsqueeze(0))
    return problem.w_star.clone(), float(loss0[0])


def _full_gradient(problem: Problem, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """∇L_n at w [d] over all n points (x, y on the run's device; or the problem's streamed data)."""
    if problem.source is None:
        return problem.model.loss_and_grad(w.unsqueeze(0), x, y)[1][0]
    return streamed_loss_and_grad(problem.model.loss_and_grad, problem.source, w.unsqueeze(0))[1][0]


def _part_metrics(
    config: RunConfig,
    problem: Problem,
    trace: Trace,
    loss0: float,
    t_erm: float,
    device: torch.device,
    gamma: float,
    decided: localization.Localization | None,
    part: Part,
) -> dict[str, Any]:
    """A part's metrics: a plain run's, of its chains, with its size and what it was asked as."""
    metrics = build_metrics(config, problem, trace, loss0, t_erm, device, gamma, part.n_params)
    step = metrics.get("step_size_auto", metrics.get("step_size_mean", config.resolved_step_size))
    metrics |= {"gamma": gamma, "step_size": step, "n_params": part.n_params, "restrict": part.description}
    if decided is not None:
        metrics |= {"gamma_auto": decided.gamma, "gamma_reason": decided.reason}
    return metrics


# A run's own facts, the same for every part: a run of several parts keeps these at its top level.
RUN_KEYS = (
    "run_id", "family_id", "sampler", "problem", "n", "nbeta", "L0", "llc_true", "t_erm_s", "t_warmup_s",
    "t_sampling_s", "compiled", "device", "gpu_mode", "torch",
)  # fmt: skip


def _refined_metrics(per_part: dict[str, dict[str, Any]], d: int) -> dict[str, Any]:
    """metrics.json of a restricted run: every part's under "parts"; at the top level, the one part's
    estimate and trust, or for several parts no estimate and trusted only where every part is."""
    if len(per_part) == 1:
        (only,) = per_part.values()
        return {**only, "parts": per_part}
    first = next(iter(per_part.values()))
    flagged = [(name, m) for name, m in per_part.items() if not m["trusted"]]
    return {
        **{k: first[k] for k in RUN_KEYS if k in first},
        "d": d,
        "llc_mean": None,
        "llc_se": None,
        "trusted": not flagged,
        "flags": sorted({f for _, m in flagged for f in m["flags"]}),
        "flag_reasons": [f"{name}: {r}" for name, m in flagged for r in m["flag_reasons"]],
        "parts": per_part,
    }


def build_metrics(
    config: RunConfig,
    problem: Problem,
    trace: Trace,
    loss0: float,
    t_erm: float,
    device: torch.device,
    gamma: float,
    d: int | None = None,
) -> dict[str, Any]:
    """metrics.json's values; `gamma` is the localization the run used (gamma=auto's choice), `d` the
    dimension sampled (a part's; default the model's)."""
    d = problem.model.n_params if d is None else d
    summary = diagnostics.summarize(trace.llc)
    total_grad_evals = trace.grad_evals * config.chains
    draws = trace.llc.shape[0] * trace.llc.shape[1]
    ess = summary["ess_bulk"]
    nbeta = config.nbeta_for(problem.n)
    metrics: dict[str, Any] = {
        "run_id": config.run_id,
        "family_id": config.family_id,
        "sampler": config.sampler,
        "problem": config.problem,
        "d": d,
        "n": problem.n,
        "nbeta": nbeta,
        "L0": loss0,
        "llc_true": problem.llc_true,
        **summary,
        **diagnostics.trend(trace.llc),
        **diagnostics.spread(trace.llc, trace.w_proj, gamma),
        "chains_diverged": int((trace.diverged_at >= 0).sum()),
        "diverged_chains": [int(c) for c in np.flatnonzero(trace.diverged_at >= 0)],
        "t_erm_s": t_erm,
        "t_warmup_s": trace.t_warmup_s,
        "t_sampling_s": trace.t_sampling_s,
        "compiled": trace.compiled,
        "grad_evals": total_grad_evals,
        "draws_per_second": draws / trace.t_sampling_s if trace.t_sampling_s > 0 else math.nan,
        "ess_per_second": ess / trace.t_sampling_s if trace.t_sampling_s > 0 else math.nan,
        "ess_per_grad_eval": ess / total_grad_evals if total_grad_evals else math.nan,
        "device": str(device),
        **({"devices": list(config.devices)} if config.devices else {}),
        "gpu_mode": config.gpu_mode,
        "torch": torch.__version__,
    }
    if problem.llc_true:
        if health.estimates_lambda(gamma, config.resolved_nbeta):
            metrics["llc_rel_error"] = (summary["llc_mean"] - problem.llc_true) / problem.llc_true
        else:
            metrics["llc_note"] = health.lambda_note(gamma, config.resolved_nbeta)
    if is_linear_network(problem.model):
        # ERM is checked, not assumed: reduced-rank regression gives the best loss in closed form.
        # Rounded: LAPACK's last bit differs between processes (a SLURM job, a local worker), and the
        # gap, a difference of two close numbers, magnifies it; what it flags is far above 1e-6.
        best = best_linear_loss(problem.model, problem.x, problem.y)
        metrics["L_best"] = float(f"{best:.12g}")
        metrics["erm_gap_llc"] = round(config.resolved_nbeta * (loss0 - best), 6)
    for name in ("acceptance_rate", "step_size", "energy"):
        if name in trace.stats:
            metrics[f"{name}_mean"] = float(np.nanmean(trace.stats[name]))
    if "energy_change" in trace.stats:
        metrics["energy_change_var_per_dim"] = float(np.nanvar(trace.stats["energy_change"]) / d)
    if trace.step_size_auto:  # step_size=auto: the step chosen (the median of a sequential run's chains)
        metrics["step_size_auto"] = float(np.median(trace.step_size_auto))
        metrics["step_size_curvatures"] = trace.curvatures
    if trace.friction_auto:  # friction=auto (sghmc): the friction chosen
        metrics["friction_auto"] = float(np.median(trace.friction_auto))
    if trace.minibatch_heating:  # sgld/sghmc: how much the minibatch noise raises the LLC at the end
        metrics["minibatch_heating"] = float(np.mean(trace.minibatch_heating))
    if trace.mala_acceptance is not None:
        metrics["mala_acceptance_mean"] = float(np.nanmean(trace.mala_acceptance))
    if trace.eval_loss is not None:
        healthy = trace.eval_loss[trace.diverged_at < 0]
        if healthy.size:
            metrics["llc_mean_full_loss"] = float(nbeta * (np.nanmean(healthy) - loss0))
    if "diverging" in trace.stats:
        metrics["divergent_transitions"] = int(trace.stats["diverging"].sum())
    flags = health.assess(metrics, config.chains, config.sampler)
    metrics["trusted"] = not flags
    metrics["flags"] = [flag.name for flag in flags]
    metrics["flag_reasons"] = [flag.reason for flag in flags]
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
