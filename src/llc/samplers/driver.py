"""Run a kernel: warm-up, then record every `thin`-th step; evaluate, detect divergence, time it.

`vectorized` advances all chains as one batched computation; `sequential` runs one chain at a
time with autograd gradients, the independent reference that must give the same distribution.
"""

from __future__ import annotations

import io
import math
import pickle
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llc.config import RunConfig
from llc.posterior import LocalizedPosterior
from llc.rundir import atomic_write
from llc.samplers import KERNELS
from llc.samplers.base import StepTunable
from llc.samplers.step_search import FIRST_ITERATIONS, ITERATIONS, CurvatureStep, round_length, top_curvature
from llc.threads import cpu_threads, threads_for

Progress = Callable[[int, int], None]
PROGRESS_EVERY = 50  # steps between progress reports


@dataclass(frozen=True)
class Checkpointing:
    """Save the sampler's progress to `path` every `every_s` seconds; resume from it when present."""

    path: Path
    every_s: float = 60.0


@dataclass
class Trace:
    """Everything recorded from sampling, as numpy arrays with chains first."""

    loss: np.ndarray  # [C, T]
    llc: np.ndarray  # [C, T]
    w_proj: np.ndarray  # [C, T, P]
    stats: dict[str, np.ndarray] = field(default_factory=dict)  # each [C, T]
    eval_loss: np.ndarray | None = None  # [C, E] full-data loss at evaluation steps
    mala_acceptance: np.ndarray | None = None  # [C, E]
    diverged_at: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))  # [C], -1: never
    grad_evals: int = 0  # per chain, including warm-up
    t_sampling_s: float = 0.0  # after warm-up
    t_warmup_s: float = 0.0
    compiled: bool = False  # whether the step was compiled (compile=true, or auto deciding so)
    step_size_auto: list[float] = field(default_factory=list)  # step_size=auto: the step chosen, per search
    curvatures: list[float] = field(default_factory=list)  # step_size=auto: h_max at each check


def sample(
    config: RunConfig,
    posterior: LocalizedPosterior,
    loss0: float,
    gen: torch.Generator,
    progress: Progress | None = None,
    checkpoint: Checkpointing | None = None,
) -> Trace:
    """Sample according to config.gpu_mode and return the trace with per-draw LLC.

    With `checkpoint`, a vectorized run saves its progress periodically and, started again, resumes
    from the last save with the same random streams, so an interrupted run ends as an uninterrupted one.
    """
    threads = 0 if posterior.x.is_cuda else threads_for(config.threads, step_work(config, posterior))
    fall_back = config.compile == "auto"  # if compiling fails, run eager rather than fail
    config = config.model_copy(update={"compile": compiles(config, posterior)})
    with cpu_threads(threads):
        return _sample(config, posterior, loss0, gen, progress, checkpoint, fall_back)


# compile=auto compiles a run whose eager sampling is estimated at AUTO_COMPILE_S seconds or more: the
# compiled step is 1.3-1.4x faster, and compiling costs 10-15 s per block shape with a cold cache.
AUTO_COMPILE_S = 60.0
EAGER_FLOPS = 40e9  # FLOP/s of an eager step on the reference workload, 2 cores (performance.md)
EAGER_BLOCK_S = 3e-4  # the fixed cost of a 16-chain block's eager step: its ~40 operator calls
COMPILERS = ("g++", "c++")  # torch inductor builds C++ with one of these


def compiles(config: RunConfig, posterior: LocalizedPosterior) -> bool:
    """Whether the run is compiled: as `compile` says; for `auto`, SGLD (no preconditioner) and SGHMC
    on the CPU, vectorized, with a C++ compiler present, when eager sampling would take long."""
    if config.compile != "auto":
        return bool(config.compile)
    if config.step_size_auto:  # a compiled step is specialised to its step size, which the search changes
        return False
    fuses = getattr(KERNELS[config.sampler], "fuses", None)  # blocked kernels compile whole steps
    if fuses is None or not fuses(config) or posterior.x.is_cuda or config.gpu_mode == "sequential":
        return False
    if not posterior.model.auto_compile:
        return False
    if not any(shutil.which(name) for name in COMPILERS):
        return False
    blocks = math.ceil(config.chains / 16)
    step_s = 6 * step_work(config, posterior) / EAGER_FLOPS + blocks * EAGER_BLOCK_S
    return _total_steps(config) * step_s >= AUTO_COMPILE_S


def step_work(config: RunConfig, posterior: LocalizedPosterior) -> int:
    """Multiply-adds of one forward pass of all chains on one batch."""
    batch = min(posterior.batch_size or posterior.n, posterior.n)
    return config.chains * batch * posterior.model.macs_per_example


def _sample(
    config: RunConfig,
    posterior: LocalizedPosterior,
    loss0: float,
    gen: torch.Generator,
    progress: Progress | None,
    checkpoint: Checkpointing | None,
    fall_back: bool = False,
) -> Trace:
    if config.gpu_mode != "sequential":
        return _run_chains(config, posterior, loss0, config.chains, gen, progress, checkpoint, fall_back)
    traces = []
    reference = replace(posterior, grad_fn=posterior.model.autograd_loss_and_grad)
    for c in range(config.chains):
        chain_gen = torch.Generator(device=gen.device).manual_seed(gen.initial_seed() + 1000 * (c + 1))
        done = c * _total_steps(config)
        step_progress = (lambda i, n, done=done: progress(done + i, n * config.chains)) if progress else None
        traces.append(_run_chains(config, reference, loss0, 1, chain_gen, step_progress, None))
    return _concat(traces)


def _total_steps(config: RunConfig) -> int:
    return config.warmup + config.steps


def _run_chains(
    config: RunConfig,
    posterior: LocalizedPosterior,
    loss0: float,
    chains: int,
    gen: torch.Generator,
    progress: Progress | None,
    checkpoint: Checkpointing | None,
    fall_back: bool = False,
) -> Trace:
    kernel = KERNELS[config.sampler](posterior, config)
    grad_fn = posterior.grad_fn
    if config.compile and not getattr(kernel, "fused", False):  # a fused kernel compiles its whole step
        posterior = replace(posterior, grad_fn=torch.compile(grad_fn, dynamic=False))
        kernel.posterior = posterior  # type: ignore[attr-defined]
    w0 = posterior.w_star.expand(chains, -1).clone()
    state = kernel.init(w0, gen)
    draws = config.steps // config.thin
    device, dtype = w0.device, w0.dtype
    losses = torch.full((chains, draws), math.nan, device=device, dtype=dtype)
    directions = _projection_directions(posterior.dim, config.projections, config.seed, dtype).to(device)
    w_proj = torch.zeros((chains, draws, config.projections), device=device, dtype=dtype)
    stats: dict[str, torch.Tensor] = {}
    eval_every = config.eval_every
    # hmc and mclmc already record the full-data loss at every draw.
    n_evals = config.steps // eval_every if eval_every and kernel.minibatch else 0
    eval_loss = torch.full((chains, n_evals), math.nan, device=device, dtype=dtype)
    mala = torch.full((chains, n_evals), math.nan, device=device, dtype=dtype)
    total = _total_steps(config)

    # The MALA check draws from its own stream so that turning evaluation on leaves the chains unchanged.
    eval_gen = torch.Generator(device=device).manual_seed(gen.initial_seed() + 1)
    search = CurvatureStep() if config.step_size_auto else None
    first, warm_before, sampled_before = 0, 0.0, 0.0
    record_arrays = {"losses": losses, "w_proj": w_proj, "eval_loss": eval_loss, "mala": mala}
    saved = _load_checkpoint(checkpoint.path, device) if checkpoint is not None else None
    if saved is not None:
        state, stats = saved["state"], saved["stats"]
        kernel.__dict__.update(saved["kernel"])
        for name, array in record_arrays.items():
            array.copy_(saved[name])
        gen.set_state(saved["gen"])
        eval_gen.set_state(saved["eval_gen"])
        first, warm_before, sampled_before = saved["t"], saved["t_warmup_s"], saved["t_sampling_s"]
        search = saved.get("search", search)
    start = time.perf_counter()
    sampling_start = start if first >= config.warmup else None
    last_save = start

    def save(t_next: int) -> None:
        now = time.perf_counter()
        warm = warm_before + ((sampling_start or now) - start if first < config.warmup else 0.0)
        sampled = sampled_before + (now - sampling_start if sampling_start is not None else 0.0)
        transient = {"posterior", *getattr(kernel, "transient", ())}
        kernel_state = {k: v for k, v in kernel.__dict__.items() if k not in transient}
        payload = {
            "t": t_next, "state": state, "stats": stats, "kernel": kernel_state, "gen": gen.get_state(),
            "eval_gen": eval_gen.get_state(), "t_warmup_s": warm, "t_sampling_s": sampled, "search": search,
            **record_arrays,
        }  # fmt: skip
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        assert checkpoint is not None
        atomic_write(checkpoint.path, buffer.getvalue())

    blocked = hasattr(kernel, "advance")  # runs several steps per call (BlockedKernel)
    # A kernel that spreads its chains over the cores itself runs each share on one torch thread (and
    # a compiled step is compiled for the thread count it will run with).
    if blocked:
        with cpu_threads(1 if kernel.parts > 1 else 0):  # type: ignore[attr-defined]
            kernel.prepare(state, fall_back)  # type: ignore[attr-defined]
    compiled = bool(getattr(kernel, "fused", config.compile))
    with cpu_threads(1 if getattr(kernel, "parts", 1) > 1 else 0):
        t = first
        if search is not None and t == 0:
            _search_round(search, 0, config.warmup, kernel, state, posterior, eval_gen)
        while t < total:
            tune = t < config.warmup
            if not tune and sampling_start is None:
                _synchronize(device)
                sampling_start = time.perf_counter()
            recorder = _Recorder(t - config.warmup, config.thin, losses, w_proj, directions, posterior)
            if blocked:
                stop = _stride_end(t, total, config, n_evals)
                if search is not None and t < config.warmup:  # stop at the end of the search's round
                    stop = min(stop, (t // round_length(config.warmup) + 1) * round_length(config.warmup))
                state = kernel.advance(state, stop - t, tune, recorder)  # type: ignore[attr-defined]
            else:
                stop = t + 1
                state = _one_step(kernel, state, gen, tune, recorder, stats)
            t = stop
            if search is not None and t <= config.warmup:
                _search_round(search, t, config.warmup, kernel, state, posterior, eval_gen)
            s = t - config.warmup  # steps sampled so far
            if s > 0 and n_evals and s % eval_every == 0 and s // eval_every <= n_evals:
                e = s // eval_every - 1
                position = kernel.position(state)
                eval_loss[:, e] = posterior.full_loss(position)
                if config.sampler == "sgld":
                    eps, scale = kernel.langevin_proposal(state)  # type: ignore[attr-defined]
                    mala[:, e] = mala_acceptance(posterior, position, eps, eval_gen, scale)
            due = checkpoint is not None and time.perf_counter() - last_save >= checkpoint.every_s
            if due and t < total:
                save(t)
                last_save = time.perf_counter()
            if progress is not None and t % PROGRESS_EVERY == 0:
                progress(t, total)
    _synchronize(device)
    end = time.perf_counter()
    if sampling_start is None:
        sampling_start = end
    if progress is not None:
        progress(total, total)

    loss_np = losses.cpu().double().numpy()
    diverged_at = _first_nonfinite(loss_np)
    llc = posterior.nbeta * (loss_np - loss0)
    for c, t_div in enumerate(diverged_at):
        if t_div >= 0:
            llc[c, t_div:] = np.nan
    return Trace(
        loss=loss_np,
        llc=llc,
        w_proj=w_proj.cpu().double().numpy(),
        stats={
            k: v.cpu().numpy() if v.dtype == torch.bool else v.cpu().double().numpy()
            for k, v in stats.items()
        },
        eval_loss=eval_loss.cpu().double().numpy() if n_evals else None,
        mala_acceptance=mala.cpu().double().numpy() if n_evals and config.sampler == "sgld" else None,
        diverged_at=diverged_at,
        grad_evals=total * kernel.grad_evals_per_step,
        compiled=compiled,
        step_size_auto=[kernel.step_size] if search is not None else [],  # type: ignore[attr-defined]
        curvatures=search.curvatures if search is not None else [],
        t_sampling_s=sampled_before + end - sampling_start,
        t_warmup_s=warm_before + (sampling_start - start if first < config.warmup else 0.0),
    )


def _stride_end(t: int, total: int, config: RunConfig, n_evals: int) -> int:
    """Where a run of steps from t must stop for the driver to look: a progress report, the end of
    warm-up, an evaluation."""
    end = min(total, (t // PROGRESS_EVERY + 1) * PROGRESS_EVERY)
    if t < config.warmup:
        return min(end, config.warmup)
    if n_evals:
        s = t - config.warmup
        end = min(end, config.warmup + (s // config.eval_every + 1) * config.eval_every)
    return end


@dataclass
class _Recorder:
    """Records a run of steps from sampled step `s0` (negative during warm-up) as the kernel reports
    them: the draw's position (projected on the trace's directions) and its loss, per block of rows."""

    s0: int
    thin: int
    losses: torch.Tensor
    w_proj: torch.Tensor
    directions: torch.Tensor
    posterior: LocalizedPosterior

    def draw(self, j: int) -> int | None:
        """The draw that step j of the run makes, or None when it is not recorded."""
        s = self.s0 + j
        return s // self.thin if s >= 0 and (s + 1) % self.thin == 0 else None

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None and self.directions.shape[1]:
            self.w_proj[rows, d] = (w - self.posterior.w_star) @ self.directions

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None:
            self.losses[rows, d] = loss


def _search_round(
    search: CurvatureStep,
    t: int,
    warmup: int,
    kernel: StepTunable,
    state: Any,
    posterior: LocalizedPosterior,
    gen: torch.Generator,
) -> None:
    """step_size=auto: before warm-up and at the end of each round, measure the largest curvature at the
    chains' positions and give the kernel the step it allows; at the end of warm-up, the chosen step.
    A chain that the round threw off to non-finite values starts again from w*."""
    if t % round_length(warmup) == 0 and t < warmup:
        position = kernel.position(state)
        lost = ~torch.isfinite(position).all(dim=1)
        if lost.any():
            kernel.restart(state, lost.nonzero().squeeze(1))
        eps, scale = kernel.langevin_proposal(state)
        iterations = FIRST_ITERATIONS if search.direction is None else ITERATIONS
        h, search.direction = top_curvature(posterior, position, search.direction, iterations, gen, scale)
        finite = h[torch.isfinite(h)]
        _set_langevin_step(kernel, eps, search.update(float(finite.max()) if finite.numel() else math.nan))
    if t == warmup:
        eps, _ = kernel.langevin_proposal(state)
        _set_langevin_step(kernel, eps, search.final)


def _set_langevin_step(kernel: StepTunable, current: float, wanted: float | None) -> None:
    """Scale the kernel's step size so that its Langevin step (langevin_proposal) becomes `wanted`."""
    if wanted is not None:
        kernel.step_size = kernel.step_size * wanted / current


def _one_step(
    kernel: Any,
    state: Any,
    gen: torch.Generator,
    tune: bool,
    recorder: _Recorder,
    stats: dict[str, torch.Tensor],
) -> Any:
    """One step of a kernel that steps all chains at once, recorded when it is a draw."""
    everyone = slice(None)
    # Minibatch kernels report the loss at the position they start from; the others, where they land.
    if kernel.minibatch:
        recorder.position(0, everyone, kernel.position(state))
    state, info = kernel.step(state, gen, tune)
    if not kernel.minibatch:
        recorder.position(0, everyone, kernel.position(state))
    recorder.loss(0, everyone, info.loss)
    d = recorder.draw(0)
    for name, value in info.stats.items() if d is not None else ():
        if name not in stats:
            fill = False if value.dtype == torch.bool else math.nan
            stats[name] = torch.full(recorder.losses.shape, fill, device=value.device, dtype=value.dtype)
        stats[name][:, d] = value
    return state


def _load_checkpoint(path: Path, device: torch.device) -> dict | None:
    """A saved progress, or None when there is none or it cannot be read (then sampling starts over)."""
    if not path.exists():
        return None
    try:
        return torch.load(path, weights_only=False, map_location=device)  # our own file, never foreign input
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError):
        path.unlink(missing_ok=True)
        return None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mala_acceptance(
    posterior: LocalizedPosterior,
    w: torch.Tensor,
    eps: float,
    gen: torch.Generator,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Metropolis acceptance probability of one full-batch Langevin proposal of step eps from w [chains],
    preconditioned by the diagonal `scale` G [chains, d] when given (G held fixed, as the kernel does):
    w' = w − (eps/2)·G·∇U(w) + sqrt(eps·G)·ξ."""
    metric = torch.ones_like(w) if scale is None else scale
    loss, grad = posterior.loss_and_grad(w)
    u = posterior.potential(w, loss)
    noise = torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype)
    proposal = w - 0.5 * eps * metric * grad + (eps * metric).sqrt() * noise
    loss_p, grad_p = posterior.loss_and_grad(proposal)
    u_p = posterior.potential(proposal, loss_p)
    log_q_forward = -((proposal - w + 0.5 * eps * metric * grad).square() / metric).sum(dim=1) / (2 * eps)
    log_q_backward = -((w - proposal + 0.5 * eps * metric * grad_p).square() / metric).sum(dim=1) / (2 * eps)
    log_alpha = (log_q_backward - log_q_forward + u - u_p).nan_to_num(nan=-math.inf)
    return torch.exp(log_alpha.clamp(max=0.0))


def _projection_directions(dim: int, count: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed + 104729)
    directions = torch.randn(dim, count, generator=gen, dtype=dtype)
    return directions / directions.norm(dim=0, keepdim=True)


def _first_nonfinite(values: np.ndarray) -> np.ndarray:
    bad = ~np.isfinite(values)
    return np.where(bad.any(axis=1), bad.argmax(axis=1), -1)


def _concat(traces: list[Trace]) -> Trace:
    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays, axis=0)  # type: ignore[arg-type]

    first = traces[0]
    return Trace(
        loss=np.concatenate([t.loss for t in traces]),
        llc=np.concatenate([t.llc for t in traces]),
        w_proj=np.concatenate([t.w_proj for t in traces]),
        stats={k: np.concatenate([t.stats[k] for t in traces]) for k in first.stats},
        eval_loss=cat([t.eval_loss for t in traces]),
        mala_acceptance=cat([t.mala_acceptance for t in traces]),
        diverged_at=np.concatenate([t.diverged_at for t in traces]),
        grad_evals=first.grad_evals,
        t_sampling_s=sum(t.t_sampling_s for t in traces),
        t_warmup_s=sum(t.t_warmup_s for t in traces),
        compiled=first.compiled,
        step_size_auto=[step for t in traces for step in t.step_size_auto],
        curvatures=[h for t in traces for h in t.curvatures],
    )
