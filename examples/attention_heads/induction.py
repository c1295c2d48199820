"""The model and data of the attention-heads example (`induction:make_model`, `:make_data`).

A sequence is HALF distinct random tokens followed by the same tokens again. The second half can be
predicted only by induction: find the earlier copy of the current token and read the token after it,
which a 2-layer attention-only transformer learns with a previous-token head in layer 0 and an induction
head in layer 1. The model returns the logits of the predictable positions (the repeat's second token on).
Each attention layer is written as separate q/k/v/out projections, so that llc.heads finds its heads.
"""

from __future__ import annotations

import torch
from torch import nn

VOCAB, HALF = 32, 8
SEQ = 2 * HALF
D_MODEL, HEADS, LAYERS = 32, 4, 2
N_DATA = 512  # the sequences the LLC is measured on


class Attention(nn.Module):
    """Causal multi-head self-attention, bias-free: head i is rows i·d_head…(i+1)·d_head of q, k and v
    and the same columns of out_proj."""

    def __init__(self, d: int = D_MODEL, heads: int = HEADS) -> None:
        super().__init__()
        self.num_heads = heads
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.out_proj = nn.Linear(d, d, bias=False)
        self.register_buffer("mask", torch.full((SEQ, SEQ), float("-inf")).triu(1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        q, k, v = (p(h).unflatten(-1, (self.num_heads, -1)) for p in (self.q_proj, self.k_proj, self.v_proj))
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5 + self.mask
        return self.out_proj(torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).flatten(-2))


class AttentionOnly(nn.Module):
    """Token and position embeddings, LAYERS attention layers on the residual stream, unembedding."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.position = nn.Parameter(torch.randn(SEQ, D_MODEL) / D_MODEL**0.5)
        self.layers = nn.ModuleList(Attention() for _ in range(LAYERS))
        self.unembed = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position
        for attention in self.layers:
            h = h + attention(h)
        return self.unembed(h[:, HALF:-1])  # [batch, HALF - 1, VOCAB]: predicts tokens HALF + 1 … SEQ - 1


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return AttentionOnly()


def sequences(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences (HALF distinct tokens, repeated) and their predictable next tokens."""
    first = torch.rand(n, VOCAB, generator=generator).argsort(1)[:, :HALF]
    tokens = torch.cat([first, first], dim=1)
    return tokens, tokens[:, HALF + 1 :]


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed set of N_DATA sequences, where the LLC is measured (training draws fresh ones)."""
    return sequences(N_DATA, torch.Generator().manual_seed(1))
