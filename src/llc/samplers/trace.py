"""What sampling records: the trace's arrays while a run fills them, and the finished `Trace`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from llc.model.posterior import LocalizedPosterior


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
    steps: int = 0  # sampled per chain after warm-up (steps=auto: as many as the run decided)
    t_sampling_s: float = 0.0  # after warm-up
    t_warmup_s: float = 0.0
    compiled: bool = False  # whether the step was compiled (compile=true, or auto deciding so)
    step_size_auto: list[float] = field(default_factory=list)  # step_size=auto: the step chosen, per search
    curvatures: list[float] = field(default_factory=list)  # step_size=auto: h_max at each check
    friction_auto: list[float] = field(default_factory=list)  # friction=auto: the friction chosen, per search
    minibatch_heating: list[float] = field(
        default_factory=list
    )  # SGLD/SGHMC: the noise's LLC excess, per run
    # A model's parts run as one run with a step searched per part: each part's step_size_auto,
    # curvatures, friction_auto and minibatch_heating, which `chains_of` gives that part's trace.
    by_part: list[dict[str, list[float]]] = field(default_factory=list)


@dataclass
class Records:
    """What the recorded steps fill in, [chains, draws or evaluations], allocated at the start."""

    losses: torch.Tensor
    w_proj: torch.Tensor
    eval_loss: torch.Tensor  # full-data loss at evaluation steps
    mala: torch.Tensor  # MALA acceptance of SGLD's step at evaluation steps
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # the kernel's statistics, per draw

    @classmethod
    def empty(cls, draws: int, projections: int, chains: int, n_evals: int, like: torch.Tensor) -> Records:
        def nan(*shape: int) -> torch.Tensor:
            return torch.full(shape, math.nan, device=like.device, dtype=like.dtype)

        w_proj = torch.zeros((chains, draws, projections), device=like.device, dtype=like.dtype)
        return cls(nan(chains, draws), w_proj, nan(chains, n_evals), nan(chains, n_evals))

    def grown(self, draws: int, n_evals: int) -> Records:
        """These records with room for `draws` draws and `n_evals` evaluations (steps=auto's extension)."""

        def pad(values: torch.Tensor, length: int, fill: float | bool) -> torch.Tensor:
            shape = (values.shape[0], length - values.shape[1], *values.shape[2:])
            return torch.cat([values, torch.full(shape, fill, device=values.device, dtype=values.dtype)], 1)

        stats = {
            k: pad(v, draws, False if v.dtype == torch.bool else math.nan) for k, v in self.stats.items()
        }
        return Records(
            pad(self.losses, draws, math.nan),
            pad(self.w_proj, draws, 0.0),
            pad(self.eval_loss, n_evals, math.nan),
            pad(self.mala, n_evals, math.nan),
            stats,
        )

    def trace(self, nbeta: float, loss0: float, evaluated: bool, mala: bool, **facts: Any) -> Trace:
        """The records as numpy arrays, with per-draw LLC (NaN from a chain's divergence on); `facts`
        fill the rest of the trace."""
        loss = self.losses.cpu().double().numpy()
        diverged_at = first_nonfinite(loss)
        llc = nbeta * (loss - loss0)
        for c, t_div in enumerate(diverged_at):
            if t_div >= 0:
                llc[c, t_div:] = np.nan
        return Trace(
            loss=loss,
            llc=llc,
            w_proj=self.w_proj.cpu().double().numpy(),
            stats={
                k: v.cpu().numpy() if v.dtype == torch.bool else v.cpu().double().numpy()
                for k, v in self.stats.items()
            },
            eval_loss=self.eval_loss.cpu().double().numpy() if evaluated else None,
            mala_acceptance=self.mala.cpu().double().numpy() if mala else None,
            diverged_at=diverged_at,
            **facts,
        )


@dataclass
class DrawRecorder:
    """Records a run of steps from sampled step `s0` (negative during warm-up) as the kernel reports
    them: the draw's position (projected on the trace's directions), its loss and statistics."""

    s0: int
    thin: int
    records: Records
    directions: torch.Tensor
    posterior: LocalizedPosterior

    def draw(self, j: int) -> int | None:
        """The draw that step j of the run makes, or None when it is not recorded."""
        s = self.s0 + j
        return s // self.thin if s >= 0 and (s + 1) % self.thin == 0 else None

    def position(self, j: int, rows: slice, w: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None and self.directions.shape[1]:
            self.records.w_proj[rows, d] = (w - self.posterior.w_star) @ self.directions
        if d is not None and self.posterior.eval_data is not None:  # loss_data: its loss, at draws only
            self.records.losses[rows, d] = self.posterior.recorded_loss(w)

    def loss(self, j: int, rows: slice, loss: torch.Tensor) -> None:
        d = self.draw(j)
        if d is not None and self.posterior.eval_data is None:
            self.records.losses[rows, d] = loss

    def stats(self, j: int, stats: dict[str, torch.Tensor]) -> None:
        d = self.draw(j)
        for name, value in stats.items() if d is not None else ():
            if name not in self.records.stats:
                fill = False if value.dtype == torch.bool else math.nan
                shape = self.records.losses.shape
                self.records.stats[name] = torch.full(shape, fill, device=value.device, dtype=value.dtype)
            self.records.stats[name][:, d] = value


def projection_directions(dim: int, count: int, seed: int, dtype: torch.dtype) -> torch.Tensor:
    """`count` random unit directions in parameter space [dim, count], the same for every run of a seed."""
    gen = torch.Generator().manual_seed(seed + 104729)
    directions = torch.randn(dim, count, generator=gen, dtype=dtype)
    directions = directions / directions.norm(dim=0, keepdim=True)
    # Stored direction by direction (each one contiguous): a step's projection [chains, d] @ [d, count]
    # then reads both operands along d, twice as fast as through the column-major [d, count].
    return directions.t().contiguous().t()


def first_nonfinite(values: np.ndarray) -> np.ndarray:
    """Per chain, the first draw that is not finite (-1: none)."""
    bad = ~np.isfinite(values)
    return np.where(bad.any(axis=1), bad.argmax(axis=1), -1)


def chains_of(trace: Trace, rows: slice, part: int | None = None) -> Trace:
    """The trace of the chains at `rows` (a restricted run's part); run-wide facts stay as they are,
    but for the facts the run kept per part (`by_part`), which are part `part`'s."""
    facts: dict[str, Any] = trace.by_part[part] if part is not None and trace.by_part else {}
    return replace(
        trace,
        loss=trace.loss[rows],
        llc=trace.llc[rows],
        w_proj=trace.w_proj[rows],
        stats={k: v[rows] for k, v in trace.stats.items()},
        eval_loss=None if trace.eval_loss is None else trace.eval_loss[rows],
        mala_acceptance=None if trace.mala_acceptance is None else trace.mala_acceptance[rows],
        diverged_at=trace.diverged_at[rows],
        by_part=[],
        **facts,
    )


def concat(traces: list[Trace]) -> Trace:
    """The traces of one chain each (gpu_mode=sequential) as one."""

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
        steps=first.steps,
        t_sampling_s=sum(t.t_sampling_s for t in traces),
        t_warmup_s=sum(t.t_warmup_s for t in traces),
        compiled=first.compiled,
        step_size_auto=[step for t in traces for step in t.step_size_auto],
        curvatures=[h for t in traces for h in t.curvatures],
        friction_auto=[f for t in traces for f in t.friction_auto],
        minibatch_heating=[h for t in traces for h in t.minibatch_heating],
    )
