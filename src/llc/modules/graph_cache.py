"""Exported forward graphs shared by every module of one structure, so that a notebook's second call on
a model of the same architecture (another checkpoint, other weights) neither exports nor checks again.

A graph takes the weights and buffers as inputs (graph.py), so it depends on the module's structure,
not on its weights: the classes of its submodules, their plain attributes (a head count, an eps),
its parameters' and buffers' names, shapes and dtypes, its device, and the input's shape and dtype.
A module whose structure cannot be read from those (forward hooks, an attribute that is an object or
a tensor) keeps graphs of its own, and so does a graph holding tensors of the module's as constants.
"""

from __future__ import annotations

import copy
import threading
import types
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import torch

from llc.modules.chain_graph import ChainForward
from llc.modules.graph import Exported, export_forward

# Structures × input shapes kept: each holds its exported program (with a copy of the weights).
KEPT = 16
# Attribute values that are settings: compared by value, functions and classes by identity.
_PLAIN = (
    type(None), bool, int, float, str, torch.dtype, torch.device, torch.Size,
    types.FunctionType, types.BuiltinFunctionType, type,
)  # fmt: skip
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


@dataclass
class Graphs:
    """A forward exported for one input shape (None: not exportable) and its rewrite per number of
    chains (None: not rewritable), each checked once when made."""

    exported: Exported | None
    chained: dict[int, ChainForward | None] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


_shared: OrderedDict[Hashable, Graphs] = OrderedDict()
_lock = threading.Lock()


def graphs_for(module: torch.nn.Module, example: torch.Tensor) -> Graphs:
    """The graphs of `module` for inputs like `example` (one chain's batch): shared with every module of
    the same structure, exported from a copy of `module` the first time."""
    key = structure_key(module)
    if key is None:
        return Graphs(export_forward(copy.deepcopy(module), example))
    key = (key, tuple(example.shape), example.dtype, example.device)
    with _lock:
        if key in _shared:
            _shared.move_to_end(key)
            return _shared[key]
        graphs = Graphs(export_forward(copy.deepcopy(module), example))
        if graphs.exported is not None and graphs.exported.program.constants:
            return graphs  # it holds this module's own tensors
        _shared[key] = graphs
        if len(_shared) > KEPT:
            _shared.popitem(last=False)
        return graphs


def structure_key(module: torch.nn.Module) -> Hashable | None:
    """What the module's exported forward depends on besides its weights; None if that cannot be told."""
    parts: list[Hashable] = []
    for name, sub in module.named_modules():
        if any(getattr(sub, hooks, None) for hooks in _HOOKS):
            return None
        attributes = []
        for attr, value in sorted(vars(sub).items()):
            if attr.startswith("_"):
                continue  # nn.Module's own bookkeeping; parameters and buffers are read below
            plain = _plain(value)
            if plain is None and value is not None:
                return None
            attributes.append((attr, plain))
        parts.append((name, type(sub), tuple(attributes)))
    tensors = [
        (kind, name, tuple(t.shape), t.dtype, t.device, t.requires_grad)
        for kind, named in (("p", module.named_parameters()), ("b", module.named_buffers()))
        for name, t in named
    ]
    return (tuple(parts), tuple(tensors))


def _plain(value: Any) -> Hashable | None:
    """The value itself if it is a plain setting (or a tuple of them, a function, a class); else None."""
    if isinstance(value, _PLAIN):
        return value
    if isinstance(value, tuple | list):
        items = tuple(_plain(v) for v in value)
        return None if any(i is None and v is not None for i, v in zip(items, value, strict=True)) else items
    return None
