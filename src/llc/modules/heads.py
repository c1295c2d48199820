"""`llc.heads`: one restriction per attention head, {"<module path>.head<i>": {parameter: mask}}.

A head is its rows of the query, key and value projections (weights and biases) and its columns of the
output projection; the output projection's bias is shared by all heads and in none. Found:
- every `nn.MultiheadAttention` (packed `in_proj_weight`, or separate q/k/v weights when kdim/vdim differ;
  `bias_k`/`bias_v` split by head too);
- attention written as separate linear projections: a module with child `nn.Linear`s named as one of
  PROJECTION_NAMES (or as `projections` says), its head count from `num_heads`, else from its attribute
  num_heads, n_heads, n_head or num_attention_heads.
"""

from __future__ import annotations

import torch
from torch import nn

from llc.errors import ConfigError

Masks = dict[str, torch.Tensor]

# The names q, k, v and output projections go by in common code (PyTorch tutorials, GPT-2 ports, HF).
PROJECTION_NAMES = (
    ("q_proj", "k_proj", "v_proj", "out_proj"),
    ("q_proj", "k_proj", "v_proj", "o_proj"),
    ("query", "key", "value", "out"),
    ("W_Q", "W_K", "W_V", "W_O"),
    ("q", "k", "v", "o"),
)
HEAD_COUNT_ATTRIBUTES = ("num_heads", "n_heads", "n_head", "num_attention_heads")


def heads(
    module: nn.Module, projections: tuple[str, str, str, str] | None = None, num_heads: int | None = None
) -> dict[str, Masks]:
    """Per-head restrictions for `restrict=`: every nn.MultiheadAttention's heads, and those of attention
    written as q/k/v/out `nn.Linear` children (`projections` names them; `num_heads` counts their heads
    where the module does not say)."""
    found: dict[str, Masks] = {}
    names = (projections,) if projections is not None else PROJECTION_NAMES
    for path, sub in module.named_modules():
        prefix = f"{path}." if path else ""
        if isinstance(sub, nn.MultiheadAttention):
            found |= _multihead(prefix, sub)
            continue
        for q, k, v, o in names:
            children = [getattr(sub, name, None) for name in (q, k, v, o)]
            if all(isinstance(c, nn.Linear) for c in children):
                count = num_heads or _head_count(path, sub)
                found |= _projections(prefix, dict(zip((q, k, v, o), children, strict=True)), count)
                break
    if projections is not None and not found:
        raise ConfigError(f"heads: no module has nn.Linear children named {', '.join(projections)}")
    return found


def _head_count(path: str, sub: nn.Module) -> int:
    for attribute in HEAD_COUNT_ATTRIBUTES:
        count = getattr(sub, attribute, None)
        if isinstance(count, int) and count > 0:
            return count
    raise ConfigError(
        f"heads: {path or 'the model'} has q/k/v/out projections but no num_heads attribute; "
        "give llc.heads(model, num_heads=...)"
    )


def _multihead(prefix: str, attn: nn.MultiheadAttention) -> dict[str, Masks]:
    params = dict(attn.named_parameters())
    width, count = attn.embed_dim, attn.num_heads
    size = width // count
    out: dict[str, Masks] = {}
    for i in range(count):
        rows = slice(i * size, (i + 1) * size)
        masks: Masks = {}
        for name, p in params.items():
            mask = torch.zeros(p.shape, dtype=torch.bool)
            if name in ("in_proj_weight", "in_proj_bias"):
                for j in range(3):  # q, k and v stacked
                    mask[j * width + rows.start : j * width + rows.stop] = True
            elif name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                mask[rows] = True
            elif name in ("bias_k", "bias_v"):
                mask[..., rows] = True
            elif name == "out_proj.weight":
                mask[:, rows] = True
            else:
                continue
            masks[prefix + name] = mask
        out[f"{prefix}head{i}"] = masks
    return out


def _projections(prefix: str, layers: dict[str, nn.Linear], count: int) -> dict[str, Masks]:
    *qkv, o = layers
    for name in qkv:
        if layers[name].out_features % count:
            raise ConfigError(
                f"heads: {prefix}{name} has {layers[name].out_features} outputs, not a multiple of "
                f"{count} heads; give num_heads"
            )
    out: dict[str, Masks] = {}
    for i in range(count):
        masks: Masks = {}
        for name in qkv:
            size = layers[name].out_features // count
            rows = slice(i * size, (i + 1) * size)
            for pname, p in layers[name].named_parameters():
                mask = torch.zeros(p.shape, dtype=torch.bool)
                mask[rows] = True
                masks[f"{prefix}{name}.{pname}"] = mask
        size = layers[o].in_features // count
        mask = torch.zeros(layers[o].weight.shape, dtype=torch.bool)
        mask[:, i * size : (i + 1) * size] = True
        masks[f"{prefix}{o}.weight"] = mask
        out[f"{prefix}head{i}"] = masks
    return out
