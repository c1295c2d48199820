"""What the posterior and the samplers need of a model: its loss and gradient for all chains at once.

The built-in `network.MLP` and your own module (`llc.modules.model.ModuleModel`) both implement it;
the posterior depends on this protocol, not on either of them.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

Piece = tuple[slice, torch.Tensor]  # columns of the flat parameters, and a block [chains, n] of them


class Model(Protocol):
    """A model of [chains, d] flat parameters evaluated on shared data."""

    auto_compile: bool  # whether compile=auto may compile its steps

    @property
    def n_params(self) -> int: ...

    @property
    def macs_per_example(self) -> int: ...

    def batch_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The mean loss of each chain [chains]."""
        ...

    def loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss [chains] and its gradient [chains, d]."""
        ...

    def loss_and_grad_pieces(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[Piece]]:
        """`loss_and_grad` with the gradient as (columns, block) pieces, never assembled."""
        ...

    def autograd_loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_and_grad` through autograd (what a compiled step traces)."""
        ...


class Minibatches(Protocol):
    """Where a group of chains draws its minibatch indices (samplers/blocks.py's Block)."""

    # Its random streams (each with start, stop and gen): streamed data keeps a block's epochs by them.
    streams: tuple[Any, ...]

    def indices(self, high: int, count: int, device: torch.device) -> torch.Tensor: ...
