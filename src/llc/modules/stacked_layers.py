"""Modules built from common layers, evaluated for all chains at once without torch.func.

A chain's parameters are views [chains, ...] of the flat state, and a layer applies each chain's own
weights to that chain's rows of activations [chains, batch, ...] with batched matrix products
(baddbmm), so plain autograd gives the gradient. This skips vmap's per-operation cost and
functional_call's parameter swapping, which at LLC sizes take as long as the arithmetic.
`stacked_forward` builds that forward for an nn.Sequential of the layers in LAYERS (or one such
layer) and returns None for anything else, which then runs through torch.func (module_model.py).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

Params = dict[str, torch.Tensor]  # parameter name -> one chain's value per row: [chains, *shape]
Forward = Callable[[Params, torch.Tensor], torch.Tensor]  # (params, x [chains, batch, ...]) -> output

# Layers without parameters or buffers that act on each element (or each example) alone: the module
# itself computes them on [chains, batch, ...] activations. Dropout is the identity in eval mode.
ELEMENTWISE: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh,
    nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink,
    nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip


def stacked_forward(module: nn.Module) -> tuple[Forward, list[str]] | None:
    """The batched forward of `module` and the parameter names it reads (each once, in the order of
    named_parameters), or None when some part of it is not a layer this file knows."""
    built = _build(module, "")
    if built is None:
        return None
    forward, names = built
    if names != [name for name, _ in module.named_parameters()]:
        return None  # a shared (tied) parameter, or a parameter no layer here reads
    return forward, names


def _build(module: nn.Module, prefix: str) -> tuple[Forward, list[str]] | None:
    if module._forward_hooks or module._forward_pre_hooks or list(module.buffers(recurse=False)):
        return None  # hooks run only when the module is called; buffers no layer here reads
    kind = type(module)
    if kind is nn.Sequential:
        parts = [_build(child, f"{prefix}{name}.") for name, child in module._modules.items()]
        if any(part is None for part in parts) or not parts:
            return None
        forwards = [part[0] for part in parts if part is not None]

        def sequential(params: Params, h: torch.Tensor) -> torch.Tensor:
            for forward in forwards:
                h = forward(params, h)
            return h

        return sequential, [name for part in parts if part is not None for name in part[1]]
    if kind in ELEMENTWISE:
        return (lambda params, h: module(h)), []
    build = LAYERS.get(kind)
    return None if build is None else build(module, prefix)


def _linear(module: nn.Module, prefix: str) -> tuple[Forward, list[str]] | None:
    assert isinstance(module, nn.Linear)
    weight, bias = f"{prefix}weight", f"{prefix}bias"
    has_bias = module.bias is not None

    def linear(params: Params, h: torch.Tensor) -> torch.Tensor:
        w = params[weight].transpose(1, 2)  # [chains, in, out]
        rows = h.reshape(h.shape[0], -1, h.shape[-1])
        out = torch.baddbmm(params[bias].unsqueeze(1), rows, w) if has_bias else torch.bmm(rows, w)
        return out.view(*h.shape[:-1], out.shape[-1])

    return linear, [weight, bias] if has_bias else [weight]


def _layer_norm(module: nn.Module, prefix: str) -> tuple[Forward, list[str]] | None:
    assert isinstance(module, nn.LayerNorm)
    shape, eps = tuple(module.normalized_shape), module.eps
    names = [f"{prefix}{name}" for name in ("weight", "bias") if getattr(module, name, None) is not None]

    def layer_norm(params: Params, h: torch.Tensor) -> torch.Tensor:
        out = F.layer_norm(h, shape, None, None, eps)
        middle = (1,) * (h.dim() - 1 - len(shape))  # the chain's value broadcast over its rows
        for name in names:
            value = params[name].view(h.shape[0], *middle, *shape)
            out = out * value if name.endswith("weight") else out + value
        return out

    return layer_norm, names


def _embedding(module: nn.Module, prefix: str) -> tuple[Forward, list[str]] | None:
    assert isinstance(module, nn.Embedding)
    if module.padding_idx is not None or module.max_norm is not None or module.scale_grad_by_freq:
        return None
    weight = f"{prefix}weight"

    def embedding(params: Params, h: torch.Tensor) -> torch.Tensor:
        table = params[weight]  # [chains, vocabulary, width]: chain c's rows start at c · vocabulary
        chains, vocabulary = table.shape[:2]
        offsets = torch.arange(0, chains * vocabulary, vocabulary, device=h.device)
        return F.embedding(h + offsets.view(chains, *(1,) * (h.dim() - 1)), table.reshape(-1, table.shape[2]))

    return embedding, [weight]


def _flatten(module: nn.Module, prefix: str) -> tuple[Forward, list[str]] | None:
    assert isinstance(module, nn.Flatten)
    start, end = (d + 1 if d >= 0 else d for d in (module.start_dim, module.end_dim))  # past the chains
    return (lambda params, h: h.flatten(start, end)), []


LAYERS: dict[type[nn.Module], Callable[[nn.Module, str], tuple[Forward, list[str]] | None]] = {
    nn.Linear: _linear,
    nn.LayerNorm: _layer_norm,
    nn.Embedding: _embedding,
    nn.Flatten: _flatten,
}
