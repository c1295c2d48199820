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
from llc.samplers.base import Kernel, StepTunable, TunableState
from llc.samplers.build import build_kernel, fuses
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
    if not fuses(config) or posterior.x.is_cuda or config.gpu_mode == "sequential":
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


@dataclass
class _Records:
    """What the recorded steps fill in, [chains, draws or evaluations], allocated at the start."""

    losses: torch.Tensor
    w_proj: torch.Tensor
    eval_loss: torch.Tensor  # full-data loss at evaluation steps
    mala: torch.Tensor  # MALA acceptance of SGLD's step at evaluation steps
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # the kernel's statistics, per draw

    @classmethod
    def empty(cls, config: RunConfig, chains: int, n_evals: int, like: torch.Tensor) -> _Records:
        def nan(*shape: int) -> torch.Tensor:
            return torch.full(shape, math.nan, device=like.device, dtype=like.dtype)

        draws = config.steps // config.thin
        w_proj = torch.zeros((chains, draws, config.projections), device=like.device, dtype=like.dtype)
        return cls(nan(chains, draws), w_proj, nan(chains, n_evals), nan(chains, n_evals))


@dataclass
class _Run:
    """A run in progress, and exactly what its checkpoint holds."""

    t: int  # steps taken, warm-up included
    state: Any  # the kernel's state (samplers/base.py)
    records: _Records
    eval_gen: torch.Generator  # the MALA check's and the step search's random numbers
    search: CurvatureStep | None  # step_size=auto's progress
    warmup_s: float = 0.0
    sampling_s: float = 0.0


@dataclass
class _Context:
    """What every piece of a run reads: its config, kernel and posterior, and where it reports."""

    config: RunConfig
    kernel: Kernel[Any]
    posterior: LocalizedPosterior
    directions: torch.Tensor  # [d, projections] the trace's random projections
    n_evals: int
    progress: Progress | None
    saver: _Saver | None

    @property
    def total(self) -> int:
        return _total_steps(self.config)


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
    if config.compile and not fuses(config):  # a fused kernel compiles its whole step itself
        posterior = replace(posterior, grad_fn=torch.compile(posterior.grad_fn, dynamic=False))
    kernel = build_kernel(config, posterior)
    # hmc and mclmc already record the full-data loss at every draw.
    n_evals = config.steps // config.eval_every if config.eval_every and kernel.minibatch else 0
    saver = _Saver(checkpoint) if checkpoint is not None else None
    run = saver.load(posterior.w_star.device) if saver is not None else None
    if run is None:
        run = _start(config, kernel, posterior, chains, gen, n_evals)
    w_star = posterior.w_star
    directions = _projection_directions(posterior.dim, config.projections, config.seed, w_star.dtype)
    ctx = _Context(config, kernel, posterior, directions.to(w_star.device), n_evals, progress, saver)
    since = time.perf_counter()
    run.state = kernel.prepare(run.state, fall_back)
    run.warmup_s += time.perf_counter() - since
    with cpu_threads(kernel.torch_threads):
        _warm_up(ctx, run)
        _sample_recorded(ctx, run)
    if progress is not None:
        progress(ctx.total, ctx.total)
    return _trace(ctx, run, loss0)


def _start(
    config: RunConfig,
    kernel: Kernel[Any],
    posterior: LocalizedPosterior,
    chains: int,
    gen: torch.Generator,
    n_evals: int,
) -> _Run:
    """A run at step 0: every chain at w*."""
    state = kernel.init(posterior.w_star.expand(chains, -1).clone(), gen)
    records = _Records.empty(config, chains, n_evals, posterior.w_star)
    # The MALA check draws from its own stream so that turning evaluation on leaves the chains unchanged.
    eval_gen = torch.Generator(device=gen.device).manual_seed(gen.initial_seed() + 1)
    return _Run(0, state, records, eval_gen, CurvatureStep() if config.step_size_auto else None)


def _warm_up(ctx: _Context, run: _Run) -> None:
    """The warm-up steps: the kernel tunes itself, and step_size=auto's search runs its rounds."""
    warmup = ctx.config.warmup
    if run.search is not None and run.t == 0:
        _search_round(run.search, 0, warmup, ctx.kernel, run.state, ctx.posterior, run.eval_gen)
    since = time.perf_counter()
    while run.t < warmup:
        stop = _stride_end(run.t, ctx.total, ctx.config, ctx.n_evals)
        if run.search is not None:  # stop at the end of the search's round
            stop = min(stop, (run.t // round_length(warmup) + 1) * round_length(warmup))
        run.state = ctx.kernel.advance(run.state, stop - run.t, True, _Recorder.at(ctx, run))
        run.t = stop
        if run.search is not None:
            _search_round(run.search, run.t, warmup, ctx.kernel, run.state, ctx.posterior, run.eval_gen)
        if run.t == warmup:
            _synchronize(ctx.posterior.w_star.device)
        now = time.perf_counter()
        run.warmup_s, since = run.warmup_s + now - since, now
        _report(ctx, run)


def _sample_recorded(ctx: _Context, run: _Run) -> None:
    """The recorded steps, every `thin`-th a draw, evaluated every `eval_every`."""
    since = time.perf_counter()
    while run.t < ctx.total:
        stop = _stride_end(run.t, ctx.total, ctx.config, ctx.n_evals)
        run.state = ctx.kernel.advance(run.state, stop - run.t, False, _Recorder.at(ctx, run))
        run.t = stop
        _evaluate(ctx, run)
        if run.t == ctx.total:
            _synchronize(ctx.posterior.w_star.device)
        now = time.perf_counter()
        run.sampling_s, since = run.sampling_s + now - since, now
        _report(ctx, run)


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


def _evaluate(ctx: _Context, run: _Run) -> None:
    """At every `eval_every`-th sampled step: the full-data loss, and for SGLD the MALA acceptance."""
    s = run.t - ctx.config.warmup  # steps sampled so far
    every = ctx.config.eval_every
    if not (ctx.n_evals and s > 0 and s % every == 0 and s // every <= ctx.n_evals):
        return
    e = s // every - 1
    position = ctx.kernel.position(run.state)
    run.records.eval_loss[:, e] = ctx.posterior.full_loss(position)
    if ctx.config.sampler == "sgld":
        eps, scale = ctx.kernel.langevin_proposal(run.state)  # type: ignore[attr-defined]
        run.records.mala[:, e] = mala_acceptance(ctx.posterior, position, eps, run.eval_gen, scale)


def _report(ctx: _Context, run: _Run) -> None:
    """After a run of steps: a checkpoint when one is due, a progress report at its multiples."""
    if ctx.saver is not None and run.t < ctx.total:
        ctx.saver.save_if_due(run)
    if ctx.progress is not None and run.t % PROGRESS_EVERY == 0:
        ctx.progress(run.t, ctx.total)


@dataclass
class _Recorder:
    """Records a run of steps from sampled step `s0` (negative during warm-up) as the kernel reports
    them: the draw's position (projected on the trace's directions), its loss and statistics."""

    s0: int
    thin: int
    records: _Records
    directions: torch.Tensor
    posterior: LocalizedPosterior

    @classmethod
    def at(cls, ctx: _Context, run: _Run) -> _Recorder:
        return cls(run.t - ctx.config.warmup, ctx.config.thin, run.records, ctx.directions, ctx.posterior)

    def draw(self, j: int) -> int | None:
        """The draw that step j of the run makes, or None when it is not recorded."""
        s = self.s0 + j
        return s // self.thin if s >= 0 and (s + 1) % self.thin == 0 else None

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None and self.directions.shape[1]:
            self.records.w_proj[rows, d] = (w - self.posterior.w_star) @ self.directions

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None:
            self.records.losses[rows, d] = loss

    def stats(self, j: int, stats: dict[str, torch.Tensor]) -> None:
        d = self.draw(j)
        for name, value in stats.items() if d is not None else ():
            if name not in self.records.stats:
                fill = False if value.dtype == torch.bool else math.nan
                shape = self.records.losses.shape
                self.records.stats[name] = torch.full(shape, fill, device=value.device, dtype=value.dtype)
            self.records.stats[name][:, d] = value


def _search_round(
    search: CurvatureStep,
    t: int,
    warmup: int,
    kernel: StepTunable,
    state: TunableState,
    posterior: LocalizedPosterior,
    gen: torch.Generator,
) -> None:
    """step_size=auto: before warm-up and at the end of each round, measure the largest curvature at the
    chains' positions and give the kernel the step it allows; at the end of warm-up, the chosen step.
    A chain that the round threw off to non-finite values starts again from w*."""
    if t % round_length(warmup) == 0 and t < warmup:
        position = state.w
        lost = ~torch.isfinite(position).all(dim=1)
        if lost.any():
            kernel.restart(state, lost.nonzero().squeeze(1))
        eps, scale = kernel.langevin_proposal(state)
        iterations = FIRST_ITERATIONS if search.direction is None else ITERATIONS
        h, search.direction = top_curvature(posterior, position, search.direction, iterations, gen, scale)
        finite = h[torch.isfinite(h)]
        _set_langevin_step(state, eps, search.update(float(finite.max()) if finite.numel() else math.nan))
    if t == warmup:
        eps, _ = kernel.langevin_proposal(state)
        _set_langevin_step(state, eps, search.final)


def _set_langevin_step(state: TunableState, current: float, wanted: float | None) -> None:
    """Scale the kernel's step size so that its Langevin step (langevin_proposal) becomes `wanted`."""
    if wanted is not None:
        state.step_size = state.step_size * wanted / current


def _trace(ctx: _Context, run: _Run, loss0: float) -> Trace:
    """The finished run as numpy arrays, with per-draw LLC (NaN from a chain's divergence on)."""
    records, config = run.records, ctx.config
    loss_np = records.losses.cpu().double().numpy()
    diverged_at = _first_nonfinite(loss_np)
    llc = ctx.posterior.nbeta * (loss_np - loss0)
    for c, t_div in enumerate(diverged_at):
        if t_div >= 0:
            llc[c, t_div:] = np.nan
    evaluated, mala = bool(ctx.n_evals), bool(ctx.n_evals) and config.sampler == "sgld"
    return Trace(
        loss=loss_np,
        llc=llc,
        w_proj=records.w_proj.cpu().double().numpy(),
        stats={
            k: v.cpu().numpy() if v.dtype == torch.bool else v.cpu().double().numpy()
            for k, v in records.stats.items()
        },
        eval_loss=records.eval_loss.cpu().double().numpy() if evaluated else None,
        mala_acceptance=records.mala.cpu().double().numpy() if mala else None,
        diverged_at=diverged_at,
        grad_evals=ctx.total * ctx.kernel.grad_evals_per_step,
        compiled=ctx.kernel.fused or bool(config.compile and not fuses(config)),
        step_size_auto=[run.state.step_size] if run.search is not None else [],
        curvatures=run.search.curvatures if run.search is not None else [],
        t_sampling_s=run.sampling_s,
        t_warmup_s=run.warmup_s,
    )


class _Saver:
    """Saves a run every `every_s` seconds (atomically), and loads it back."""

    def __init__(self, checkpoint: Checkpointing) -> None:
        self.path, self.every_s = checkpoint.path, checkpoint.every_s
        self.last = time.perf_counter()

    def save_if_due(self, run: _Run) -> None:
        if time.perf_counter() - self.last < self.every_s:
            return
        buffer = io.BytesIO()
        torch.save(run, buffer)
        atomic_write(self.path, buffer.getvalue())
        self.last = time.perf_counter()

    def load(self, device: torch.device) -> _Run | None:
        """The saved run, or None when there is none or it cannot be read (then sampling starts over)."""
        saved = _load_checkpoint(self.path, device)
        return saved if isinstance(saved, _Run) else None


def _load_checkpoint(path: Path, device: torch.device) -> Any:
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
