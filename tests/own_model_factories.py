"""Factories of a small classifier and its data, named as `own_model_factories:...` in module studies."""

from __future__ import annotations

import torch


def classifier() -> torch.nn.Module:
    """A 4-8-3 tanh classifier with seeded weights."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def classification_data() -> torch.utils.data.TensorDataset:
    """200 points in 4 dimensions labelled by which of three fixed directions they lean towards."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(200, 4, generator=gen)
    directions = torch.randn(4, 3, generator=gen)
    return torch.utils.data.TensorDataset(x, (x @ directions).argmax(dim=1))


def summed_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A loss given as package.module:function: per-example cross-entropy."""
    return torch.nn.functional.cross_entropy(output, target, reduction="none")
