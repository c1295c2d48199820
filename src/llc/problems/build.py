"""Build a problem from a config: data (x, y), the student network, and the true LLC where known."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from llc.config import RunConfig
from llc.model.network import MLP
from llc.model.streaming import Source, streamed_loss
from llc.modules.model import ModuleModel
from llc.problems.data import add_noise, sample_inputs
from llc.problems.truth import true_learning_coefficient

# Independent random streams derived from the run's seed.
STREAM_DATA, STREAM_TEACHER, STREAM_INIT, STREAM_SAMPLING = range(4)


def stream(seed: int, which: int) -> torch.Generator:
    """A generator for one purpose (data, teacher, init, sampling) of one seed."""
    return torch.Generator().manual_seed(seed * 7919 + which)


@dataclass(frozen=True)
class Problem:
    """Training data and the model whose LLC is estimated; `w_star` when the model comes trained
    (a module problem), else ERM trains it. With a `source` (streamed data), x and y are its first
    points only."""

    model: MLP | ModuleModel
    x: torch.Tensor
    y: torch.Tensor
    llc_true: float | None
    w_star: torch.Tensor | None = None
    source: Source | None = None

    @property
    def n(self) -> int:
        return self.x.shape[0] if self.source is None else self.source.n

    def full_loss(self, w: torch.Tensor) -> torch.Tensor:
        """The mean loss over all n points at w [chains, d]: [chains]."""
        if self.source is None:
            return self.model.batch_loss(w, self.x, self.y)
        return streamed_loss(self.model, self.source, w)


def build_problem(config: RunConfig) -> Problem:
    dtype = getattr(torch, config.dtype)
    if config.problem == "module":
        from llc.problems.module import module_problem

        model, x, y, source = module_problem(config)
        return Problem(model, x, y, None, model.flat_parameters(), source)
    if config.problem == "mlp":
        return _teacher_student(config, dtype)
    return _analytic(config, dtype)


def student_widths(config: RunConfig) -> tuple[int, ...]:
    """Hidden widths of the mlp student: given, or derived from depth and target_params."""
    if config.widths is not None:
        return config.widths
    assert config.depth is not None and config.target_params is not None
    return (
        _width_for_budget(config.in_dim, config.out_dim, config.depth, config.target_params, config.bias),
    ) * config.depth


def _width_for_budget(fan_in: int, fan_out: int, depth: int, budget: int, bias: bool) -> int:
    """The equal hidden width whose parameter count comes closest to the budget."""

    def count(w: int) -> int:
        return MLP((fan_in, *([w] * depth), fan_out), bias=bias).n_params

    best = min(range(1, 4097), key=lambda w: abs(count(w) - budget))
    return best


def _teacher_student(config: RunConfig, dtype: torch.dtype) -> Problem:
    gen = stream(config.seed, STREAM_DATA)
    x = sample_inputs(config.x_dist, config.n_data, config.in_dim, gen, dtype)
    teacher = MLP((config.in_dim, *config.teacher_widths, config.out_dim), config.activation, config.bias)
    teacher_params = teacher.init(1, stream(config.seed, STREAM_TEACHER), dtype)
    with torch.no_grad():
        clean = teacher.forward(teacher_params, x)[0]
    y = add_noise(config.noise, clean, x, config.noise_scale, gen)
    student = MLP(
        (config.in_dim, *student_widths(config), config.out_dim), config.activation, config.bias, config.loss
    )
    return Problem(student, x, y, None)


def _analytic(config: RunConfig, dtype: torch.dtype) -> Problem:
    """Linear networks without biases fitted to y = x W + noise, with W of the true rank."""
    assert config.widths is not None
    widths = config.widths
    m, n_out = widths[0], widths[-1]
    rank = min(m, n_out) if config.problem == "linear" else config.true_rank
    assert rank is not None
    gen_t = stream(config.seed, STREAM_TEACHER)
    left = torch.randn(m, rank, generator=gen_t, dtype=dtype)
    right = torch.randn(rank, n_out, generator=gen_t, dtype=dtype)
    teacher_map = left @ right / math.sqrt(max(rank, 1))
    gen = stream(config.seed, STREAM_DATA)
    x = sample_inputs(config.x_dist, config.n_data, m, gen, dtype)
    y = add_noise(config.noise, x @ teacher_map, x, config.noise_scale, gen)
    student = MLP(widths, "identity", bias=False, loss=config.loss)
    return Problem(student, x, y, true_learning_coefficient(config.problem, widths, config.true_rank))
