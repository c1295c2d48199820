"""Run a kernel (base.py's protocol): warm-up, then record every `thin`-th step; evaluate, time it.

A run reads top to bottom in `_run_chains`: build the kernel, start at w* or load the checkpoint
(checkpoint.py), `_warm_up` (the kernel tunes itself; step_size=auto's rounds, step_search.py),
`_sample_recorded` (draws into trace.py's records, `_evaluate` every `eval_every`), then the trace.
Each loop advances the kernel a stride of steps at a time (`_stride_end`) and `_report`s after each.

`vectorized` advances all chains as one batched computation; `sequential` runs one chain at a
time with autograd gradients, the independent reference that must give the same distribution.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, cast

import torch

from llc.model.gram import GramLoss
from llc.model.posterior import LocalizedPosterior
from llc.samplers.base import Kernel, LangevinKernel
from llc.samplers.build import build_kernel
from llc.samplers.checkpoint import Checkpointing, Run, Saver
from llc.samplers.registry import Sampling
from llc.samplers.step_search import StepSearch, minibatch_heating, round_length, search_round
from llc.samplers.trace import DrawRecorder, Records, Trace, concat, projection_directions
from llc.threads import cpu_threads, threads_for

Progress = Callable[[int, int], None]
# How many more steps the chains need, given the trace so far (0: they are done); steps=auto's rule.
MoreSteps = Callable[[Trace], int]
PROGRESS_EVERY = 50  # steps between progress reports


def sample(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    loss0: float,
    gen: torch.Generator,
    progress: Progress | None = None,
    checkpoint: Checkpointing | None = None,
    more: MoreSteps | None = None,
) -> Trace:
    """Sample according to sampling.gpu_mode and return the trace with per-draw LLC (`sampling`: the run's
    sampling parameters, which the run layer takes from its RunConfig).

    With `checkpoint`, a vectorized run saves its progress periodically and, started again, resumes
    from the last save with the same random streams, so an interrupted run ends as an uninterrupted one.
    With `more`, a vectorized run continues the same chains by as many steps as it asks for after each
    part (steps=auto); a sequential run samples `sampling.steps` only, so that its chains stay equal.
    """
    threads = 0 if posterior.x.is_cuda else threads_for(sampling.threads, step_work(sampling, posterior))
    fall_back = sampling.compile == "auto"  # if compiling fails, run eager rather than fail
    sampling = replace(sampling, compile=compiles(sampling, posterior))
    with cpu_threads(threads):
        return _sample(sampling, posterior, loss0, gen, progress, checkpoint, fall_back, more)


# compile=auto compiles a run whose eager sampling is estimated at AUTO_COMPILE_S seconds or more: the
# compiled step is 1.3-1.4x faster, and compiling costs 10-15 s per block shape with a cold cache.
AUTO_COMPILE_S = 60.0
EAGER_FLOPS = 40e9  # FLOP/s of an eager step on the reference workload, 2 cores (performance.md)
EAGER_BLOCK_S = 3e-4  # the fixed cost of a 16-chain block's eager step: its ~40 operator calls
COMPILERS = ("g++", "c++")  # torch inductor builds C++ with one of these


def compiles(sampling: Sampling, posterior: LocalizedPosterior) -> bool:
    """Whether the run is compiled: as `compile` says; for `auto`, SGLD (no preconditioner) and SGHMC
    on the CPU, vectorized, with a C++ compiler present, when eager sampling would take long. A
    restricted run (a model's parts) runs eager: the compiled steps know no masks."""
    if posterior.restricted:
        return False
    if sampling.compile != "auto":
        return bool(sampling.compile)
    if sampling.step_size_auto:  # a compiled step is specialised to its step size, which the search changes
        return False
    if not sampling.fuses or posterior.x.is_cuda or sampling.gpu_mode == "sequential":
        return False
    if not posterior.model.auto_compile:
        return False
    if not any(shutil.which(name) for name in COMPILERS):
        return False
    blocks = math.ceil(sampling.chains / 16)
    step_s = 6 * step_work(sampling, posterior) / EAGER_FLOPS + blocks * EAGER_BLOCK_S
    return _total_steps(sampling) * step_s >= AUTO_COMPILE_S


def step_work(sampling: Sampling, posterior: LocalizedPosterior) -> int:
    """Multiply-adds of one forward pass of all chains on one batch; for a linear network's gradient
    from second moments (gram.py), of its products of weight matrices, whatever n."""
    if isinstance(posterior.grad_fn, GramLoss):
        return sampling.chains * posterior.dim * max(posterior.grad_fn.model.widths)
    batch = min(posterior.batch_size or posterior.n, posterior.n)
    return sampling.chains * batch * posterior.model.macs_per_example


def _sample(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    loss0: float,
    gen: torch.Generator,
    progress: Progress | None,
    checkpoint: Checkpointing | None,
    fall_back: bool = False,
    more: MoreSteps | None = None,
) -> Trace:
    if sampling.gpu_mode != "sequential":
        return _run_chains(
            sampling, posterior, loss0, sampling.chains, gen, progress, checkpoint, fall_back, more
        )
    traces = []
    reference = replace(posterior, grad_fn=posterior.model.autograd_loss_and_grad)
    for c in range(sampling.chains):
        chain_gen = torch.Generator(device=gen.device).manual_seed(gen.initial_seed() + 1000 * (c + 1))
        done = c * _total_steps(sampling)
        step_progress = (
            (lambda i, n, done=done: progress(done + i, n * sampling.chains)) if progress else None
        )
        traces.append(_run_chains(sampling, reference, loss0, 1, chain_gen, step_progress, None))
    return concat(traces)


def _total_steps(sampling: Sampling) -> int:
    return sampling.warmup + sampling.steps


@dataclass
class _Context:
    """What every piece of a run reads: its sampling, kernel and posterior, and where it reports."""

    sampling: Sampling
    kernel: Kernel[Any]
    posterior: LocalizedPosterior
    directions: torch.Tensor  # [d, projections] the trace's random projections
    n_evals: int
    progress: Progress | None
    saver: Saver | None

    @property
    def total(self) -> int:
        return _total_steps(self.sampling)


def _run_chains(
    sampling: Sampling,
    posterior: LocalizedPosterior,
    loss0: float,
    chains: int,
    gen: torch.Generator,
    progress: Progress | None,
    checkpoint: Checkpointing | None,
    fall_back: bool = False,
    more: MoreSteps | None = None,
) -> Trace:
    if sampling.compile and not sampling.fuses:  # a fused kernel compiles its whole step itself
        posterior = replace(posterior, grad_fn=torch.compile(posterior.grad_fn, dynamic=False))
    kernel = build_kernel(sampling, posterior)
    # hmc and mclmc already record the full-data loss at every draw.
    n_evals = sampling.steps // sampling.eval_every if sampling.eval_every and kernel.minibatch else 0
    saver = Saver(checkpoint) if checkpoint is not None else None
    run = saver.load(posterior.w_star.device) if saver is not None else None
    if run is None:
        run = _start(sampling, kernel, posterior, chains, gen, n_evals)
    elif run.steps is not None:  # saved after the chains were extended (steps=auto)
        sampling = replace(sampling, steps=run.steps)
        n_evals = sampling.steps // sampling.eval_every if n_evals else 0
    w_star = posterior.w_star
    directions = projection_directions(posterior.dim, sampling.projections, sampling.seed, w_star.dtype)
    ctx = _Context(sampling, kernel, posterior, directions.to(w_star.device), n_evals, progress, saver)
    since = time.perf_counter()
    run.state = kernel.prepare(run.state, fall_back)
    run.warmup_s += time.perf_counter() - since
    with cpu_threads(kernel.torch_threads):
        _warm_up(ctx, run)
        _sample_recorded(ctx, run)
        while more is not None and (extra := more(_draws(ctx, run, loss0))) > 0:
            _extend(ctx, run, extra)
            _sample_recorded(ctx, run)
    if progress is not None:
        progress(ctx.total, ctx.total)
    return _trace(ctx, run, loss0)


def _start(
    sampling: Sampling,
    kernel: Kernel[Any],
    posterior: LocalizedPosterior,
    chains: int,
    gen: torch.Generator,
    n_evals: int,
) -> Run:
    """A run at step 0: every chain at w*."""
    state = kernel.init(posterior.w_star.expand(chains, -1).clone(), gen)
    records = Records.empty(
        sampling.steps // sampling.thin, sampling.projections, chains, n_evals, posterior.w_star
    )
    # The MALA check draws from its own stream so that turning evaluation on leaves the chains unchanged.
    eval_gen = torch.Generator(device=gen.device).manual_seed(gen.initial_seed() + 1)
    search = None
    if sampling.step_size_auto:
        search = StepSearch.starting(sampling.friction_auto, chains // sampling.parts, sampling.parts)
    return Run(0, state, records, eval_gen, search)


def _warm_up(ctx: _Context, run: Run) -> None:
    """The warm-up steps: the kernel tunes itself, and step_size=auto's search runs its rounds."""
    warmup = ctx.sampling.warmup
    since = time.perf_counter()  # the search's first round is warm-up's too
    if run.search is not None and run.t == 0:
        search_round(run.search, 0, warmup, ctx.kernel, run.state, ctx.posterior, run.eval_gen)
    while run.t < warmup:
        stop = _stride_end(run.t, ctx.total, ctx.sampling, ctx.n_evals)
        if run.search is not None:  # stop at the end of the search's round
            stop = min(stop, (run.t // round_length(warmup) + 1) * round_length(warmup))
        run.state = ctx.kernel.advance(run.state, stop - run.t, True, _recorder(ctx, run))
        run.t = stop
        if run.search is not None:
            search_round(run.search, run.t, warmup, ctx.kernel, run.state, ctx.posterior, run.eval_gen)
        if run.t == warmup:
            _synchronize(ctx.posterior.w_star.device)
        now = time.perf_counter()
        run.warmup_s, since = run.warmup_s + now - since, now
        _report(ctx, run)


def _sample_recorded(ctx: _Context, run: Run) -> None:
    """The recorded steps, every `thin`-th a draw, evaluated every `eval_every`."""
    since = time.perf_counter()
    while run.t < ctx.total:
        stop = _stride_end(run.t, ctx.total, ctx.sampling, ctx.n_evals)
        run.state = ctx.kernel.advance(run.state, stop - run.t, False, _recorder(ctx, run))
        run.t = stop
        _evaluate(ctx, run)
        if run.t == ctx.total:
            _synchronize(ctx.posterior.w_star.device)
        now = time.perf_counter()
        run.sampling_s, since = run.sampling_s + now - since, now
        _report(ctx, run)


def _draws(ctx: _Context, run: Run, loss0: float) -> Trace:
    """The draws so far, for deciding whether to extend (no evaluation: its random stream is left as is)."""
    return run.records.trace(ctx.posterior.nbeta, loss0, False, False, steps=ctx.sampling.steps)


def _extend(ctx: _Context, run: Run, extra: int) -> None:
    """The same chains continue for `extra` more steps: room for their draws and evaluations."""
    ctx.sampling = replace(ctx.sampling, steps=ctx.sampling.steps + extra)
    n_evals = ctx.sampling.steps // ctx.sampling.eval_every if ctx.n_evals else 0
    run.records = run.records.grown(ctx.sampling.steps // ctx.sampling.thin, n_evals)
    ctx.n_evals = n_evals
    run.steps = ctx.sampling.steps


def _stride_end(t: int, total: int, sampling: Sampling, n_evals: int) -> int:
    """Where a run of steps from t must stop for the driver to look: a progress report, the end of
    warm-up, an evaluation."""
    end = min(total, (t // PROGRESS_EVERY + 1) * PROGRESS_EVERY)
    if t < sampling.warmup:
        return min(end, sampling.warmup)
    if n_evals:
        s = t - sampling.warmup
        end = min(end, sampling.warmup + (s // sampling.eval_every + 1) * sampling.eval_every)
    return end


def _evaluate(ctx: _Context, run: Run) -> None:
    """At every `eval_every`-th sampled step: the full-data loss, and for SGLD the MALA acceptance."""
    s = run.t - ctx.sampling.warmup  # steps sampled so far
    every = ctx.sampling.eval_every
    if not (ctx.n_evals and s > 0 and s % every == 0 and s // every <= ctx.n_evals):
        return
    e = s // every - 1
    position = ctx.kernel.position(run.state)
    run.records.eval_loss[:, e] = ctx.posterior.full_loss(position)
    if ctx.sampling.spec.mala_check:
        eps, scale = cast(LangevinKernel[Any], ctx.kernel).langevin_proposal(run.state)
        run.records.mala[:, e] = mala_acceptance(ctx.posterior, position, eps, run.eval_gen, scale)


def _report(ctx: _Context, run: Run) -> None:
    """After a run of steps: a checkpoint when one is due, a progress report at its multiples."""
    if ctx.saver is not None and run.t < ctx.total:
        ctx.saver.save_if_due(run)
    if ctx.progress is not None and run.t % PROGRESS_EVERY == 0:
        ctx.progress(run.t, ctx.total)


def _recorder(ctx: _Context, run: Run) -> DrawRecorder:
    """Where the next run of steps from run.t records its draws."""
    sampling = ctx.sampling
    return DrawRecorder(run.t - sampling.warmup, sampling.thin, run.records, ctx.directions, ctx.posterior)


def _trace(ctx: _Context, run: Run, loss0: float) -> Trace:
    sampling, search = ctx.sampling, run.search
    evaluated = bool(ctx.n_evals)
    heating = _heating(ctx, run)
    return run.records.trace(
        ctx.posterior.nbeta,
        loss0,
        evaluated,
        evaluated and sampling.spec.mala_check,
        grad_evals=ctx.total * ctx.kernel.grad_evals_per_step,
        steps=sampling.steps,
        compiled=ctx.kernel.fused or bool(sampling.compile and not sampling.fuses),
        minibatch_heating=[h for h in heating if h is not None],
        t_sampling_s=run.sampling_s,
        t_warmup_s=run.warmup_s,
        **_search_facts(search, run.state, heating),
    )


def _search_facts(search: StepSearch | None, state: Any, heating: list[float | None]) -> dict[str, Any]:
    """step_size=auto's choices: the step (and friction) and the curvatures, over the run and, for a
    model's parts run as one (run/parts.py), per part."""
    if search is None:
        return {}
    parts = range(len(search.parts))
    steps = [search.value(state.step_size, k) for k in parts]
    frictions = [search.value(state.friction, k) for k in parts] if search.tunes_friction else []
    facts: dict[str, Any] = {
        "step_size_auto": steps,
        "curvatures": search.curvatures,
        "friction_auto": frictions,
    }
    if len(search.parts) > 1:
        facts["by_part"] = [
            {
                "step_size_auto": [steps[k]],
                "curvatures": part.curvatures,
                "friction_auto": frictions[k : k + 1],
                "minibatch_heating": [] if heating[k] is None else [heating[k]],
            }
            for k, part in enumerate(search.parts)
        ]
    return facts


def _heating(ctx: _Context, run: Run) -> list[float | None]:
    """SGLD and SGHMC: how much the minibatch noise raises the LLC where the chains ended, per part (from
    the evaluation's own random stream, so the chains are unchanged)."""
    if not ctx.kernel.minibatch:
        return []
    kernel = cast(Any, ctx.kernel)
    return minibatch_heating(kernel, run.state, ctx.posterior, run.eval_gen, ctx.sampling.parts)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mala_acceptance(
    posterior: LocalizedPosterior,
    w: torch.Tensor,
    eps: float | torch.Tensor,
    gen: torch.Generator,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Metropolis acceptance probability of one full-batch Langevin proposal of step eps from w [chains],
    preconditioned by the diagonal `scale` G [chains, d] when given (G held fixed, as the kernel does):
    w' = w − (eps/2)·G·∇U(w) + sqrt(eps·G)·ξ (eps one number, or one per chain [chains, 1])."""
    metric = torch.ones_like(w) if scale is None else scale
    loss, grad = posterior.loss_and_grad(w)
    u = posterior.potential(w, loss)
    noise = posterior.masked(torch.randn(w.shape, generator=gen, device=w.device, dtype=w.dtype))
    proposal = w - 0.5 * eps * metric * grad + (eps * metric).sqrt() * noise
    loss_p, grad_p = posterior.loss_and_grad(proposal)
    u_p = posterior.potential(proposal, loss_p)
    two_eps = 2 * eps.squeeze(1) if isinstance(eps, torch.Tensor) else 2 * eps
    log_q_forward = -((proposal - w + 0.5 * eps * metric * grad).square() / metric).sum(dim=1) / two_eps
    log_q_backward = -((w - proposal + 0.5 * eps * metric * grad_p).square() / metric).sum(dim=1) / two_eps
    log_alpha = (log_q_backward - log_q_forward + u - u_p).nan_to_num(nan=-math.inf)
    return torch.exp(log_alpha.clamp(max=0.0))
