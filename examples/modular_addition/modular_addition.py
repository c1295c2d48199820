"""The model and data of the modular-addition example (`modular_addition:make_model`, `:make_data`).

Inputs are the tokens `a b =` with a, b < P; the label is (a + b) mod P, read from the last position of a
one-layer transformer. The training set is a fixed half of all P² pairs: trained with weight decay, the
network first memorizes it, then (much later) generalizes — the stage the LLC curve is meant to show.
Attention is written with plain tensor operations so that torch.func.vmap runs every chain at once.
"""

from __future__ import annotations

import torch
from torch import nn

P = 23
TRAIN_FRACTION = 0.5
D_MODEL, HEADS, D_MLP = 32, 2, 64


class Transformer(nn.Module):
    """Token and position embeddings, one attention block and one MLP block (pre-norm free), unembedding."""

    def __init__(self, vocab: int = P + 1, d: int = D_MODEL, heads: int = HEADS, d_mlp: int = D_MLP) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Embedding(vocab, d)
        self.position = nn.Parameter(torch.randn(3, d) / d**0.5)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.mlp = nn.Sequential(nn.Linear(d, d_mlp), nn.ReLU(), nn.Linear(d_mlp, d))
        self.unembed = nn.Linear(d, P, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position  # [batch, 3, d]
        q, k, v = self.qkv(h).unflatten(-1, (3, self.heads, -1)).unbind(-3)  # each [batch, 3, heads, d_head]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
        attended = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(-2)
        h = h + self.out(attended)
        h = h + self.mlp(h)
        return self.unembed(h[:, -1])  # logits for (a + b) mod P, read at the `=` token


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return Transformer()


def all_pairs() -> tuple[torch.Tensor, torch.Tensor]:
    """Every `a b =` sequence and its answer, in a fixed shuffled order (the first half: the training set)."""
    a, b = torch.cartesian_prod(torch.arange(P), torch.arange(P)).unbind(1)
    tokens = torch.stack([a, b, torch.full_like(a, P)], dim=1)
    order = torch.randperm(P * P, generator=torch.Generator().manual_seed(0))
    return tokens[order], ((a + b) % P)[order]


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The training set: what the model was trained on, and so where its LLC is measured."""
    tokens, labels = all_pairs()
    n = int(TRAIN_FRACTION * len(tokens))
    return tokens[:n], labels[:n]
