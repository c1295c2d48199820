"""The localized tempered posterior around w*, evaluated for all chains at once.

    U(w) = n·beta·L(w) + (gamma/2)·||w - w*||²,   pi(w) ∝ exp(-U(w))

L is the mean loss over a minibatch (sgld, sghmc) or over all n points (hmc, mclmc).

Restricted to a part of the model (`mask`, one row per chain or one for all), U's gradient is zero
outside the part, and the kernels mask their noise and momenta alike (`masked`): the weights outside stay
exactly at w*. `gamma` may then differ per chain ([chains, 1]: each chain's part's own).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llc.model.protocol import Minibatches, Model, Piece

Batch = tuple[torch.Tensor, torch.Tensor]
GradFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class LocalizedPosterior:
    model: Model
    x: torch.Tensor
    y: torch.Tensor
    w_star: torch.Tensor
    nbeta: float
    gamma: float | torch.Tensor  # a tensor [chains, 1]: per chain (a restricted run's parts)
    batch_size: int | None = None
    grad_fn: GradFn | None = field(default=None, repr=False)
    mask: torch.Tensor | None = None  # [chains or 1, d], 1 on the chain's part, 0 elsewhere; None: all
    # loss_data: the points the LLC's loss is evaluated on at the recorded draws (None: the training data)
    eval_data: Batch | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        # Decided here, not inside a compiled function (where comparing bound methods is unreliable).
        self._model_gradient = self.grad_fn is None
        if self.grad_fn is None:
            self.grad_fn = self.model.loss_and_grad
        # Each chain's dimension: one number where every part has the same size (so that a restriction
        # to every parameter computes what an unrestricted run does), else per chain [chains, 1].
        self._dims: torch.Tensor | int = self.dim
        if self.mask is not None:
            dims = self.mask.sum(dim=1, keepdim=True)
            self._dims = int(dims[0, 0]) if bool((dims == dims[0, 0]).all()) else dims

    @property
    def n(self) -> int:
        return self.x.shape[0]

    @property
    def dim(self) -> int:
        return self.w_star.shape[0]

    def indices(self, block: Minibatches) -> torch.Tensor | None:
        """The block's minibatch as indices of points [chains, batch]: an independent minibatch (with
        replacement) per chain, from the block's random streams; None when a step uses all n."""
        if self.batch_size is None or self.batch_size >= self.n:
            return None
        return block.indices(self.n, self.batch_size, self.x.device)

    def placeholder_indices(self, chains: int) -> torch.Tensor | None:
        """Indices shaped as `indices` gives them, all 0, drawing no random number (to compile with)."""
        if self.batch_size is None or self.batch_size >= self.n:
            return None
        return torch.zeros((chains, self.batch_size), dtype=torch.long, device=self.x.device)

    def batch_at(self, idx: torch.Tensor | None) -> Batch:
        """The points at `indices` (all n for None)."""
        return (self.x, self.y) if idx is None else self.gather(idx)

    def gather(self, idx: torch.Tensor) -> Batch:
        """The points at indices idx [chains, batch]: ([chains, batch, ...], [chains, batch, ...]).
        (index_select is several times faster than advanced indexing here.)"""
        flat = idx.reshape(-1)
        x = torch.index_select(self.x, 0, flat).view(*idx.shape, *self.x.shape[1:])
        return x, torch.index_select(self.y, 0, flat).view(*idx.shape, *self.y.shape[1:])

    def data_loss_and_grad(self, w: torch.Tensor, batch: Batch | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss L [chains] and its gradient ∇L [chains, d] on the batch (None: all n points)."""
        x, y = batch if batch is not None else (self.x, self.y)
        assert self.grad_fn is not None
        return self.grad_fn(w, x, y)

    @property
    def restricted(self) -> bool:
        return self.mask is not None

    def loss_and_grad(
        self, w: torch.Tensor, batch: Batch | None = None, rows: slice = slice(None)
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss L [chains] on the batch and the potential's gradient ∇U [chains, d] (of the chains at
        `rows` of the run, where a restriction differs per chain)."""
        loss, grad = self.data_loss_and_grad(w, batch)
        grad.mul_(self.nbeta)
        if isinstance(self.gamma, torch.Tensor):
            grad.addcmul_(w - self.w_star, _at(self.gamma, rows))
        else:
            grad.add_(w - self.w_star, alpha=self.gamma)
        if self.mask is not None:
            grad.mul_(_at(self.mask, rows))
        return loss, grad

    def descend(
        self, w: torch.Tensor, batch: Batch, step: float | torch.Tensor, rows: slice = slice(None)
    ) -> torch.Tensor:
        """w <- w - step·∇U(w) in place, with ∇U on the batch; returns the loss L [chains] there before.
        Two passes over [chains, d], towards w* and along -nβ∇L, with ∇U never assembled: at LLC sizes
        such passes, not the arithmetic, are much of a step's cost. (Weights outside a restriction stay
        at w*: the pull towards w* leaves them there and their gradient is masked.) `step` is one number,
        or one per chain at `rows` [chains, 1] (a model's parts, each with its own step)."""
        x, y = batch
        assert self.grad_fn is not None
        loss, grad = self.grad_fn(w, x, y)
        if self.mask is not None:
            grad.mul_(_at(self.mask, rows))
        pull = step * _at(self.gamma, rows) if isinstance(self.gamma, torch.Tensor) else step * self.gamma
        w.lerp_(self.w_star, pull)
        if isinstance(step, torch.Tensor):
            w.addcmul_(grad, step, value=-self.nbeta)
        else:
            w.add_(grad, alpha=-step * self.nbeta)
        return loss

    def masked(self, noise: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """Noise or momenta [chains, d] zeroed outside the chains' parts, in place (as is, unrestricted)."""
        return noise if self.mask is None else noise.mul_(_at(self.mask, rows))

    def part_dims(self, rows: slice = slice(None)) -> torch.Tensor | int:
        """The dimension each chain moves in: its part's parameter count, [chains, 1] or one for all."""
        return self._dims if isinstance(self._dims, int) else _at(self._dims, rows)

    def recorded_loss(self, w: torch.Tensor) -> torch.Tensor | None:
        """loss_data's loss [chains] at recorded positions w; None: the kernel's own loss is recorded."""
        return None if self.eval_data is None else self.model.batch_loss(w, *self.eval_data)

    def loss_and_grad_pieces(self, w: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, list[Piece]]:
        """`loss_and_grad` with ∇U as (columns, block [chains, n]) pairs in column order, never assembled
        into one tensor: a compiled step computes each block's update where the block lies, and
        joins the updated blocks with one `torch.cat(..., out=)` (assembling ∇U inside a compiled
        graph costs a slow masked kernel)."""
        x, y = batch
        if self._model_gradient:
            loss, pieces = self.model.loss_and_grad_pieces(w, x, y)
        else:
            assert self.grad_fn is not None
            loss, grad = self.grad_fn(w, x, y)
            pieces = [(slice(0, self.dim), grad)]
        pieces = sorted(pieces, key=lambda piece: piece[0].start)
        return loss, [
            (cols, g * self.nbeta + self.gamma * (w[:, cols] - self.w_star[cols])) for cols, g in pieces
        ]

    def potential(self, w: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """U(w) [chains] from the full-data loss at w."""
        if isinstance(self.gamma, torch.Tensor):
            return self.nbeta * loss + 0.5 * (self.gamma * (w - self.w_star).square()).sum(dim=1)
        return self.nbeta * loss + 0.5 * self.gamma * (w - self.w_star).square().sum(dim=1)

    def full_loss(self, w: torch.Tensor) -> torch.Tensor:
        return self.model.batch_loss(w, self.x, self.y)


def _at(per_chain: torch.Tensor, rows: slice) -> torch.Tensor:
    """The rows of a per-chain tensor for the chains at `rows` (a single row serves every chain)."""
    return per_chain if per_chain.shape[0] == 1 else per_chain[rows]
