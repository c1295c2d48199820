"""An exported forward graph (module_graph.py) rewritten to evaluate all chains in one pass, without vmap.

Every value that depends on the parameters or the data gains a leading chain dimension: parameters
arrive as views [chains, ...] of the flat state, the data as [chains, batch, ...], and each operation
is rewritten for it (linear as baddbmm with each chain's weights, layer_norm and embedding with each
chain's affine parameters or table, dimensions of shape operations shifted by one). Values that do
not depend on them (masks built in the forward, buffers) stay as they are. An operation without a
rule here makes `batch_over_chains` return None, and the graph then runs under vmap. This does what
vmap does for these operations, minus its per-operation cost, which at LLC sizes is a large part.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

import torch
from torch import fx
from torch.export.graph_signature import InputKind

from llc.modules.graph import POINTWISE, graph_inputs

aten = torch.ops.aten
ChainForward = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], torch.Tensor]

SHIFTED = {  # operations whose arguments at these positions are dimensions of the input (shifted by one)
    aten.softmax.int: (1,), aten._softmax.default: (1,), aten.log_softmax.int: (1,),
    aten._log_softmax.default: (1,), aten.narrow.default: (1,), aten.select.int: (1,),
    aten.slice.Tensor: (1,), aten.squeeze.dim: (1,), aten.unbind.int: (1,), aten.transpose.int: (1, 2),
    aten.split_with_sizes.default: (2,), aten.split.Tensor: (2,),
}  # fmt: skip


# Where the dimension argument of an operation goes when it is left at its default, 0.
DIMENSION_AT = {aten.unbind.int: 1, aten.slice.Tensor: 1, aten.split.Tensor: 2}


class Unsupported(Exception):
    """An operation with no rule for a chain dimension."""


def batch_over_chains(program: torch.export.ExportedProgram, chains: int) -> ChainForward | None:
    """The forward of the program's graph (perhaps narrowed) for `chains` chains at once."""
    try:
        batched = _rewrite(program, program.graph_module, chains)
    except Unsupported:
        return None

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        return batched(*graph_inputs(program, params, buffers, x))[0]

    return forward


def _rewrite(program: torch.export.ExportedProgram, source: fx.GraphModule, chains: int) -> fx.GraphModule:
    kinds = [spec.kind for spec in program.graph_signature.input_specs]
    graph = fx.Graph()
    new: dict[fx.Node, fx.Node] = {}
    batched: set[fx.Node] = set()  # nodes of the source graph whose value has the chain dimension
    placeholders = iter(kinds)
    for node in source.graph.nodes:
        if node.op == "placeholder":
            new[node] = graph.placeholder(node.name)
            if next(placeholders) in (InputKind.PARAMETER, InputKind.USER_INPUT):
                batched.add(node)
        elif node.op == "output":
            outputs = node.args[0]
            if not all(o in batched for o in outputs):
                raise Unsupported("an output that does not depend on the parameters")
            graph.output(tuple(new[o] for o in outputs))
        elif node.op == "get_attr":
            new[node] = graph.get_attr(node.target)
        elif not any(isinstance(a, fx.Node) and a in batched for a in node.all_input_nodes):
            new[node] = graph.node_copy(node, lambda n: new[n])
        else:
            new[node] = _rule(graph, node, new, batched, chains)
            batched.add(node)
    graph.lint()
    return fx.GraphModule(source, graph)


def _rank(node: Any) -> int:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    if isinstance(value, torch.Tensor):
        return value.dim()
    if isinstance(node, fx.Node) and node.target is operator.getitem:
        return _rank(node.args[0]) - 1  # an element of unbind
    raise Unsupported(f"no shape for {node}")


def _shape(node: fx.Node) -> list[int]:
    value = node.meta.get("val")
    if not isinstance(value, torch.Tensor):
        raise Unsupported(f"no shape for {node}")
    return list(value.shape)


def _rule(
    graph: fx.Graph, node: fx.Node, new: dict[fx.Node, fx.Node], batched: set[fx.Node], chains: int
) -> fx.Node:
    target = node.target
    call = graph.call_function

    def arg(a: Any) -> Any:
        return new[a] if isinstance(a, fx.Node) else a

    def lifted(a: Any, rank: int) -> Any:
        """A batched input with singleton dimensions after the chains' up to per-chain rank `rank`."""
        if not isinstance(a, fx.Node) or a not in batched:
            return arg(a)
        own = _rank(a)
        if own == rank:
            return new[a]
        return call(aten.reshape.default, (new[a], [chains, *[1] * (rank - own), *_shape(a)]))

    args, kwargs = list(node.args), dict(node.kwargs)
    if len(args) == DIMENSION_AT.get(target, -1):
        args.append(0)  # the default dimension, which the chains' dimension moves
    if target in POINTWISE:
        rank = _rank(node)
        return call(target, tuple(lifted(a, rank) for a in args), {k: arg(v) for k, v in kwargs.items()})
    if target is operator.getitem:
        return call(operator.getitem, (new[args[0]], args[1]))
    if target in SHIFTED:
        rank = _rank(args[0])
        for i in SHIFTED[target]:
            if i < len(args):
                args[i] = args[i] % rank + 1
        return call(target, (new[args[0]], *args[1:]), kwargs)
    if target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        return call(aten.reshape.default, (new[args[0]], [chains, *_shape(node)]))
    if target in (aten.sum.dim_IntList, aten.mean.dim, aten.amax.default, aten.logsumexp.default):
        rank = _rank(args[0])
        return call(target, (new[args[0]], [d % rank + 1 for d in args[1]], *args[2:]), kwargs)
    if target is aten.permute.default:
        rank = _rank(args[0])
        return call(target, (new[args[0]], [0, *(d % rank + 1 for d in args[1])]))
    if target is aten.unsqueeze.default:
        return call(target, (new[args[0]], args[1] % (_rank(args[0]) + 1) + 1))
    if target is aten.linear.default:
        return _linear(graph, node, new, batched, chains)
    if target is aten.layer_norm.default:
        return _layer_norm(graph, node, new, batched, chains)
    if target is aten.embedding.default:
        return _embedding(graph, node, new, batched, chains)
    if target is aten.matmul.default:
        a, b = args
        ranks = [_rank(a), _rank(b)]
        if min(ranks) < 2:
            raise Unsupported("matmul of a vector")
        return call(target, (lifted(a, max(ranks)), lifted(b, max(ranks))))
    raise Unsupported(str(target))


def _linear(graph: fx.Graph, node: fx.Node, new: dict, batched: set, chains: int) -> fx.Node:
    x, weight, bias = (*node.args, None)[:3]
    call = graph.call_function
    if x not in batched:
        raise Unsupported("linear of an input without chains")
    if weight not in batched:
        if bias is not None and bias in batched:
            raise Unsupported("linear with a fixed weight and a sampled bias")
        return call(aten.linear.default, (new[x], new[weight], new[bias] if bias is not None else None))
    shape, fan_in = _shape(node), _shape(x)[-1]
    rows = call(aten.reshape.default, (new[x], [chains, -1, fan_in]))
    w = call(aten.transpose.int, (new[weight], 1, 2))
    if bias is None:
        out = call(aten.bmm.default, (rows, w))
    else:
        b = new[bias] if bias in batched else call(aten.expand.default, (new[bias], [chains, shape[-1]]))
        out = call(aten.baddbmm.default, (call(aten.unsqueeze.default, (b, 1)), rows, w))
    return call(aten.reshape.default, (out, [chains, *shape]))


def _layer_norm(graph: fx.Graph, node: fx.Node, new: dict, batched: set, chains: int) -> fx.Node:
    given = list(node.args)
    x, normalized, weight, bias, eps = (given + [None, None, None, None, 1e-5][len(given) :])[:5]
    call = graph.call_function
    if weight not in batched and bias not in batched:
        return call(aten.layer_norm.default, (new[x], normalized, *(new.get(p) for p in (weight, bias)), eps))
    out = call(aten.layer_norm.default, (new[x], normalized, None, None, eps))
    middle = [1] * (_rank(x) - len(normalized))
    for p, op in ((weight, aten.mul.Tensor), (bias, aten.add.Tensor)):
        if p is not None:
            value = new[p]
            if p in batched:
                value = call(aten.reshape.default, (value, [chains, *middle, *normalized]))
            out = call(op, (out, value))
    return out


def _embedding(graph: fx.Graph, node: fx.Node, new: dict, batched: set, chains: int) -> fx.Node:
    weight, indices = node.args[:2]
    call = graph.call_function
    if (len(node.args) > 2 and node.args[2] not in (-1, None)) or indices not in batched:
        raise Unsupported("embedding with padding_idx, or of fixed indices")
    if weight not in batched:
        return call(aten.embedding.default, (new[weight], new[indices]))
    vocabulary, width = _shape(weight)
    device = node.meta["device"]
    offsets = call(aten.arange.start_step, (0, chains * vocabulary, vocabulary), {"device": device})
    shifted = call(
        aten.add.Tensor,
        (new[indices], call(aten.reshape.default, (offsets, [chains, *[1] * _rank(indices)]))),
    )
    table = call(aten.reshape.default, (new[weight], [chains * vocabulary, width]))
    return call(aten.embedding.default, (table, shifted))
