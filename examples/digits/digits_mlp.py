"""The model and data of the digits example, as the factories a study names (`digits_mlp:make_model`).

scikit-learn's bundled 8×8 digits (1797 images, no download), pixels scaled to [0, 1], and an MLP
64 → 32 → 10 classifying them. The study's checkpoints are this model's state_dicts during training.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from torch import nn

HIDDEN = 32


def make_model() -> nn.Module:
    """The untrained classifier: logits for the 10 digits (its weights come from a checkpoint)."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 10))


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits: x [1797, 64] in [0, 1], y [1797] class labels (the training set)."""
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    return x, torch.tensor(digits.target, dtype=torch.long)
