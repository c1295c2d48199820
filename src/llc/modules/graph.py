"""A module's forward pass as an exported ATen graph that computes only what its output reads.

Models often compute more than their output uses: a transformer that returns the logits of the last
position still runs its last block's MLP on every position. `export_forward` exports the forward
(torch.export, for one input shape) and pushes every select or slice of an intermediate result back
through the operations that act on that dimension position by position (pointwise arithmetic,
linear, layer_norm, softmax over another dimension, matmul rows, transposes, reshapes that keep the
dimension), so that they run on the selected positions alone. The graph then computes the same
output (up to float rounding) as the module; it is checked against the module once, and any model
that cannot be exported, or whose graph disagrees, keeps functional_call (module_model.py).
"""

from __future__ import annotations

import logging
import math
import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import fx

log = logging.getLogger(__name__)
aten = torch.ops.aten

SMALL = 1024  # largest matrix (elements) that small_products_as_sums multiplies element by element
SHORT = 64  # longest dimension that short_softmax_as_exp takes a softmax over
# (params by name, buffers by name, x) -> the module's output; a pure function, safe under vmap and threads
GraphForward = Callable[[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor], Any]

# Operations that act on each element alone (tensors broadcast): a slice of the output is the same
# operation on the matching slices of the inputs.
POINTWISE = {
    aten.add.Tensor, aten.add.Scalar, aten.sub.Tensor, aten.sub.Scalar, aten.rsub.Scalar, aten.mul.Tensor,
    aten.mul.Scalar, aten.div.Tensor, aten.div.Scalar, aten.neg.default, aten.exp.default, aten.log.default,
    aten.tanh.default, aten.sigmoid.default, aten.relu.default, aten.gelu.default, aten.silu.default,
    aten.erf.default, aten.sqrt.default, aten.rsqrt.default, aten.abs.default, aten.pow.Tensor_Scalar,
    aten.masked_fill.Scalar, aten.masked_fill.Tensor, aten.where.self, aten.clone.default,
    aten.dropout.default, aten.alias.default, aten.maximum.default, aten.minimum.default,
    aten.clamp.default, aten.leaky_relu.default, aten.elu.default, aten.softplus.default,
    aten.hardtanh.default, aten.square.default,
}  # fmt: skip


@dataclass(frozen=True)
class Exported:
    program: torch.export.ExportedProgram  # its graph_module narrowed
    forward: GraphForward  # one chain's forward, through that graph
    pushed: int  # selections pushed towards the inputs


def export_forward(module: torch.nn.Module, x: torch.Tensor) -> Exported | None:
    """The module's forward on inputs shaped as x (one chain's batch) as a narrowed graph; None if
    torch.export cannot trace it or the graph disagrees with the module."""
    try:
        program = torch.export.export(module, (x,), strict=False)
        graph = program.graph_module
        forward = _as_function(program)
        with torch.no_grad():
            params = {k: p.detach() for k, p in module.named_parameters()}
            buffers = {k: b.detach() for k, b in module.named_buffers()}
            inputs = graph_inputs(program, params, buffers, x)
            expected = module(x)
            # Each pass reads the shapes of the nodes the one before made.
            split_fused_projections(graph)
            _ShapeRecorder(graph).run(*inputs)
            pushed = narrow_to_what_is_read(graph)
            _ShapeRecorder(graph).run(*inputs)
            short_softmax_as_exp(graph)
            _ShapeRecorder(graph).run(*inputs)
            small_products_as_sums(graph)
            got = _ShapeRecorder(graph).run(*inputs)
        torch.testing.assert_close(got[0] if len(got) == 1 else got, expected)
    except Exception as exc:  # any model torch.export cannot take keeps functional_call
        log.debug("the module's forward was not exported (%s: %s)", type(exc).__name__, exc)
        return None
    return Exported(program, forward, pushed)


def _as_function(program: torch.export.ExportedProgram) -> GraphForward:
    graph = program.graph_module
    single = len(program.graph_signature.output_specs) == 1

    def forward(params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor], x: torch.Tensor) -> Any:
        out = graph(*graph_inputs(program, params, buffers, x))
        return out[0] if single else out

    return forward


def graph_inputs(
    program: torch.export.ExportedProgram,
    params: dict[str, torch.Tensor],
    buffers: dict[str, torch.Tensor],
    x: torch.Tensor,
) -> list[torch.Tensor]:
    """The exported graph's inputs, in its order: parameters, buffers, the data, lifted constants."""
    from torch.export.graph_signature import InputKind

    args = []
    for spec in program.graph_signature.input_specs:
        if spec.kind == InputKind.PARAMETER:
            args.append(params[spec.target])
        elif spec.kind == InputKind.BUFFER:
            args.append(buffers[spec.target])
        elif spec.kind == InputKind.USER_INPUT:
            args.append(x)
        else:
            args.append(program.constants[spec.target])
    return args


def split_fused_projections(graph_module: fx.GraphModule) -> int:
    """A linear layer whose output is only cut into parts along its features (q, k and v of a fused
    attention projection: `split` of the output, or `unbind` of it viewed as [..., 3, heads, width] and
    permuted) becomes one linear layer per part, on the matching rows of the weight: the same
    arithmetic, but each part can then be narrowed alone (the queries of one position) and none is
    copied out of a permuted whole. Returns the layers split."""
    graph, split = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.linear.default or len(node.users) != 1:
            continue
        out = _shape(node)
        parts = _parts(node, out) if out is not None else None
        if parts is None:
            continue
        x, weight, bias = (*node.args, None)[:3]
        sizes, uses, finish = parts
        # One split of the weight (and bias), whose gradient is one concatenation, not a zero-filled
        # whole per part.
        with graph.inserting_before(node):
            weights, biases = (
                None if p is None else graph.call_function(aten.split_with_sizes.default, (p, sizes, 0))
                for p in (weight, bias)
            )
        for getitem, index in uses:
            with graph.inserting_before(getitem):
                rows = graph.call_function(operator.getitem, (weights, index))
                cut = None if biases is None else graph.call_function(operator.getitem, (biases, index))
                result = finish(graph.call_function(aten.linear.default, (x, rows, cut)))
            getitem.replace_all_uses_with(result)
        split += 1
    _recompile(graph_module)
    return split


def _recompile(graph_module: fx.GraphModule) -> None:
    """Drop what a rewrite left unused, check the graph, and regenerate the module's code."""
    graph_module.graph.eliminate_dead_code()
    graph_module.graph.lint()
    graph_module.recompile()


def _parts(linear: fx.Node, out: torch.Size) -> tuple[list[int], list[tuple[fx.Node, int]], Callable] | None:
    """For a linear layer's output cut into parts along its features: the parts' sizes, the getitem
    node of each part used with its index, and how to make a part from its own linear layer's output;
    None for any other use of the output."""
    graph, (user,) = linear.graph, list(linear.users)
    features, last = out[-1], len(out) - 1
    if user.target is aten.split.Tensor:
        getitems = list(user.users)
        if (*user.args, 0)[2] % len(out) != last or not all(g.target is operator.getitem for g in getitems):
            return None
        size = user.args[1]
        sizes = [min(size, features - start) for start in range(0, features, size)]
        return sizes, [(g, g.args[1]) for g in getitems], lambda part: part
    # linear -> view [..., a, *rest] -> (permute) -> unbind along the dimension of a
    if user.target not in (aten.view.default, aten.reshape.default) or len(user.users) != 1:
        return None
    shape = list(_shape(user) or [])
    if shape[:last] != list(out[:last]) or len(shape) <= last + 1:
        return None
    rest = shape[last + 1 :]
    (after,) = list(user.users)
    dims = list(range(len(shape)))
    unbind = after
    if after.target is aten.permute.default and len(after.users) == 1:
        dims = [d % len(shape) for d in after.args[1]]
        (unbind,) = list(after.users)
    if unbind.target is not aten.unbind.int:
        return None
    dim = (*unbind.args, 0)[1] % len(shape)
    if dims[dim] != last or not all(g.target is operator.getitem for g in unbind.users):
        return None
    kept = [d - (d > last) for d in dims if d != last]  # the permutation without the unbound dimension

    def finish(part: fx.Node) -> fx.Node:
        viewed = graph.call_function(aten.reshape.default, (part, [*out[:last], *rest]))
        return graph.call_function(aten.permute.default, (viewed, kept))

    return [math.prod(rest)] * shape[last], [(g, g.args[1]) for g in unbind.users], finish


def short_softmax_as_exp(graph_module: fx.GraphModule) -> int:
    """A softmax over a short dimension (at most SHORT, as over the few keys of a narrowed attention)
    rewritten as exp(x - logsumexp(x)): the same values up to float rounding, and forward and backward
    3-4x faster than torch's softmax kernels, which are built for long rows, on the CPU."""
    graph, rewritten = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (aten.softmax.int, aten._softmax.default):
            continue
        x, dim = node.args[:2]
        shape = _shape(x)
        if shape is None or shape[dim] > SHORT or node.kwargs or any(node.args[2:]):  # no dtype change
            continue
        with graph.inserting_before(node):
            norm = graph.call_function(aten.logsumexp.default, (x, [dim], True))
            total = graph.call_function(aten.exp.default, (graph.call_function(aten.sub.Tensor, (x, norm)),))
        node.replace_all_uses_with(total)
        graph.erase_node(node)
        rewritten += 1
    _recompile(graph_module)
    return rewritten


def small_products_as_sums(graph_module: fx.GraphModule) -> int:
    """Batched matmuls of one row (or one column) by a small matrix, as a narrowed attention makes
    them (a single query against a few keys), rewritten as a broadcast product and a sum: the same
    arithmetic without a matrix-product call per batch element, which costs more than the product."""
    graph, rewritten = graph_module.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.matmul.default:
            continue
        a, b = (_shape(arg) for arg in node.args)
        if a is None or b is None or min(len(a), len(b)) < 3:
            continue
        (m, k), n = a[-2:], b[-1]
        with graph.inserting_before(node):
            keys = _transposed(node.args[1])
            if m == 1 and k * n <= SMALL and keys is not None:
                # [.., 1, k] @ [.., n, k]^T (a query against keys): sum over k of a * keys, row by row
                product = graph.call_function(aten.mul.Tensor, (node.args[0], keys))
                rows = graph.call_function(aten.sum.dim_IntList, (product, [-1]))
                total = graph.call_function(aten.unsqueeze.default, (rows, -2))
            elif m == 1 and k * n <= SMALL:  # [.., 1, k] @ [.., k, n]: sum over k of a^T * b
                column = graph.call_function(aten.transpose.int, (node.args[0], -1, -2))
                product = graph.call_function(aten.mul.Tensor, (column, node.args[1]))
                total = graph.call_function(aten.sum.dim_IntList, (product, [-2], True))
            elif n == 1 and m * k <= SMALL:  # [.., m, k] @ [.., k, 1]: sum over k of a * b^T
                row = graph.call_function(aten.transpose.int, (node.args[1], -1, -2))
                product = graph.call_function(aten.mul.Tensor, (node.args[0], row))
                total = graph.call_function(aten.sum.dim_IntList, (product, [-1], True))
            else:
                continue
        node.replace_all_uses_with(total)
        graph.erase_node(node)
        rewritten += 1
    _recompile(graph_module)
    return rewritten


def _transposed(node: Any) -> fx.Node | None:
    """X where `node` is X with its last two dimensions swapped (k.transpose(-1, -2)), else None."""
    if not isinstance(node, fx.Node) or node.target is not aten.transpose.int:
        return None
    shape = _shape(node.args[0])
    if shape is None or {d % len(shape) for d in node.args[1:3]} != {len(shape) - 1, len(shape) - 2}:
        return None
    return node.args[0]


class _ShapeRecorder(fx.Interpreter):
    """Runs the graph, leaving the shape of each node that the narrowing made (as a meta tensor) where
    export leaves it for the others, node.meta["val"]; chain_graph.py reads them. Every tensor's device
    goes to node.meta["device"]."""

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            n.meta.setdefault("val", torch.empty(result.shape, dtype=result.dtype, device="meta"))
            n.meta["device"] = result.device
        elif isinstance(result, list | tuple) and all(isinstance(r, torch.Tensor) for r in result):
            n.meta.setdefault("val", [torch.empty(r.shape, dtype=r.dtype, device="meta") for r in result])
        return result


# ---- pushing selections towards the inputs ----------------------------------------------------------
def narrow_to_what_is_read(graph_module: fx.GraphModule) -> int:
    """Rewrite the graph so that a selected part of a result is computed alone; returns the pushes made."""
    graph = graph_module.graph
    work = [_as_narrow(graph, node) for node in list(graph.nodes)]
    todo = [n for n in work if n is not None]
    pushed = 0
    while todo:
        narrow = todo.pop()
        if narrow._erased:
            continue
        source = narrow.args[0]
        assert isinstance(source, fx.Node)
        key = narrow.args[1:]
        users = list(source.users)
        same = [u for u in users if _is_narrow(u) and u.args[1:] == key]
        if source.op != "call_function" or (len(same) < len(users) and not _worth_copying(source, *key)):
            continue
        with graph.inserting_before(source):
            replacement = _push(graph, source, *key)
        if replacement is None:
            continue
        created, new_narrows = replacement
        for user in same:
            user.replace_all_uses_with(created)
            graph.erase_node(user)
        if len(same) == len(users):
            graph.erase_node(source)
        todo.extend(new_narrows)
        pushed += 1
    _recompile(graph_module)
    return pushed


def _worth_copying(node: fx.Node, dim: int, start: int, length: int) -> bool:
    """Whether a narrow of `node` is computed by a copy of it on the narrowed inputs when `node` has other
    users too: when it keeps at most half. The copy costs that fraction of the forward; the backward
    then adds the narrowed part's gradient to its (small, often parameter) inputs, not to a zero-filled
    whole of `node` added to its other gradient, as a narrow's backward does."""
    shape = _shape(node)
    return shape is not None and 2 * length <= shape[dim]


def _is_narrow(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is aten.narrow.default


def _as_narrow(graph: fx.Graph, node: fx.Node) -> fx.Node | None:
    """A select or a unit-step slice rewritten as narrow (which keeps the dimension, so broadcasting and
    matmul read the same shapes) followed by a squeeze for select."""
    if node.op != "call_function" or node.target not in (aten.select.int, aten.slice.Tensor):
        return None
    source, shape = node.args[0], _shape(node.args[0])
    if shape is None:
        return None
    dim = node.args[1] % len(shape) if len(node.args) > 1 else 0
    size = shape[dim]
    if node.target is aten.select.int:
        start, length = node.args[2] % size, 1
    else:
        given = list(node.args[2:5])
        lo, hi, step = given + [None, None, 1][len(given) :]
        if step != 1:
            return None
        start, stop, _ = slice(lo, hi).indices(size)
        length = max(stop - start, 0)
    with graph.inserting_before(node):
        narrow = graph.call_function(aten.narrow.default, (source, dim, start, length))
        result = narrow
        if node.target is aten.select.int:
            result = graph.call_function(aten.squeeze.dim, (narrow, dim))
    node.replace_all_uses_with(result)
    graph.erase_node(node)
    return narrow


def _shape(node: Any) -> torch.Size | None:
    value = node.meta.get("val") if isinstance(node, fx.Node) else None
    return value.shape if isinstance(value, torch.Tensor) else None


def _push(
    graph: fx.Graph, node: fx.Node, dim: int, start: int, length: int
) -> tuple[fx.Node, list[fx.Node]] | None:
    """`node` computed on positions [start, start + length) of its output's dimension `dim` alone, from
    narrowed inputs; with the narrow nodes it made (to push further). None where no rule applies."""
    out = _shape(node)
    if out is None:
        return None
    made: list[fx.Node] = []

    def narrowed(arg: fx.Node, d: int) -> fx.Node:
        made.append(graph.call_function(aten.narrow.default, (arg, d, start, length)))
        return made[-1]

    def broadcast(arg: Any) -> Any:
        """An input of a broadcasting operation, narrowed where it spans the dimension."""
        shape = _shape(arg)
        if shape is None:
            return arg
        aligned = dim - (len(out) - len(shape))
        return arg if aligned < 0 or shape[aligned] == 1 else narrowed(arg, aligned)

    target, args = node.target, list(node.args)
    first = _shape(args[0]) if args else None
    if target in POINTWISE:
        args = [broadcast(a) for a in args]
    elif target in (aten.linear.default, aten.embedding.default):
        if dim >= len(out) - 1:  # the features: rows of the weight, not positions
            return None
        index = 0 if target is aten.linear.default else 1  # the input, or the indices
        args[index] = narrowed(args[index], dim)
    elif target is aten.layer_norm.default:
        if dim >= len(out) - len(args[1]):
            return None
        args[0] = narrowed(args[0], dim)
    elif target in (aten.softmax.int, aten._softmax.default, aten.log_softmax.int, aten._log_softmax.default):
        if dim == args[1] % len(out):
            return None
        args[0] = narrowed(args[0], dim)
    elif target is aten.matmul.default:
        a, b = _shape(args[0]), _shape(args[1])
        if a is None or b is None or len(a) < 2 or len(b) < 2:
            return None
        if dim == len(out) - 2:
            args[0] = narrowed(args[0], len(a) - 2)
        elif dim == len(out) - 1:
            args[1] = narrowed(args[1], len(b) - 1)
        else:
            args = [broadcast(a) for a in args]
    elif target is aten.transpose.int:
        a, b = (d % len(out) for d in args[1:3])
        args[0] = narrowed(args[0], b if dim == a else a if dim == b else dim)
    elif target is aten.permute.default:
        args[0] = narrowed(args[0], args[1][dim] % len(out))
    elif target in (aten.view.default, aten.reshape.default, aten._unsafe_view.default):
        assert first is not None
        kept = _same_dimension(first, out, dim)
        if kept is None:
            return None
        args[0] = narrowed(args[0], kept)
        target = aten.reshape.default  # a narrowed input may not be viewable
        args[1] = [length if d == dim else s for d, s in enumerate(out)]
    else:
        return None
    return graph.call_function(target, tuple(args), dict(node.kwargs)), made


def _same_dimension(before: torch.Size, after: torch.Size, dim: int) -> int | None:
    """The dimension of `before` that a reshape to `after` leaves whole as `after`'s `dim`, if any."""
    lead = math.prod(after[:dim])
    for d in range(len(before)):
        if math.prod(before[:d]) == lead and before[d] == after[dim]:
            return d
    return None
