"""Any torch.nn.Module evaluated for many parameter vectors ("chains") at once, through torch.func.

The module's parameters become one flat tensor of shape [chains, d] (the state every kernel uses),
cut into per-parameter views inside the function that `vmap` batches over chains, so the gradient
comes back flat too. Buffers stay fixed and the module is evaluated in eval mode. This is the
general counterpart of network.MLP, which stays the fast path for the built-in problems. A module
built only from common layers (stacked_layers.py) skips torch.func: its layers take each chain's
weights as rows of the views, in batched matrix products.

With `compute` bfloat16 or float16 (dtype=bfloat16), forward and backward run under torch.autocast
(the hand-written backward casts explicitly), while the chain state, the data, the loss and its
accumulation over the data stay float32: the model's output is cast back before the loss.
"""

from __future__ import annotations

import copy
import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch.func import functional_call, vmap

from llc.errors import ConfigError
from llc.modules.attention import batchable_attention, has_attention
from llc.modules.chain_graph import ChainForward, batch_over_chains
from llc.modules.graph import Exported, GraphForward
from llc.modules.graph_cache import Graphs, graphs_for
from llc.modules.stacked_backward import StackedGradient, stacked_backward
from llc.modules.stacked_layers import Forward, stacked_forward

log = logging.getLogger(__name__)
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (output, target) -> per-example losses
# Full-data passes (hmc, mclmc, evaluation) run over at most this many points at once, so memory stays
# chains × CHUNK × activations however large the data set.
CHUNK = 2048
# ... and, on the CPU, over at most this many chains at once where chains × points reach FULL_DATA_WORK:
# their working set is chains × points × activations, and past a core's cache a larger block is slower
# per chain (all 8 heads × 8 chains of examples/attention_heads over its 512 sequences: 5.1 s at once,
# 1.85-2.2 s in blocks of 8; the digits MLP's 64 chains over 1,797 points: 114 ms against 243 ms), while
# below it the blocks' extra calls cost more than they save (64 chains over 100 points: 9.3 ms
# against 7.6 ms; break-even near 600 points).
FULL_DATA_CHAINS = 8
FULL_DATA_WORK = 32_768
# The points the model and the loss are first tried on: a batch whose size no class count is likely to be.
PROBE = 3


def per_example_mse(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over each example's outputs (as network.MLP's mse)."""
    return (output - target.reshape(output.shape)).square().reshape(output.shape[0], -1).sum(dim=1)


def per_example_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of logits [batch, ..., classes] (classes last) against integer targets
    [batch, ...], summed over any positions: the negative log-likelihood of each whole example.
    (logsumexp - gather: under vmap, twice as fast as F.cross_entropy.)"""
    picked = output.gather(-1, target.long().unsqueeze(-1)).squeeze(-1)
    return (torch.logsumexp(output, dim=-1) - picked).reshape(output.shape[0], -1).sum(dim=1)


LOSSES: dict[str, LossFn] = {"mse": per_example_mse, "cross_entropy": per_example_cross_entropy}


@dataclass
class ModuleModel:
    """A module and a per-example loss, with the [chains, d] interface of network.MLP. `vectorized`
    false evaluates one chain at a time with plain autograd (gpu_mode=sequential)."""

    module: torch.nn.Module
    loss_fn: LossFn
    example_dims: int  # dimensions of one input example: x [n, ...] has example_dims + 1
    vectorized: bool = True
    exported: bool = True  # run the forward as an exported graph that computes only what it reads
    compute: torch.dtype | None = None  # autocast's dtype for forward and backward (None: the state's)
    auto_compile: ClassVar[bool] = False  # compile=auto leaves torch.func steps eager (samplers/driver.py)
    names: list[str] = field(init=False)
    shapes: list[torch.Size] = field(init=False)
    sizes: list[int] = field(init=False)
    buffers: dict[str, torch.Tensor] = field(init=False, repr=False)
    stacked: Forward | None = field(init=False, repr=False)  # the forward without torch.func, if any
    by_hand: StackedGradient | None = field(init=False, repr=False)  # its gradient without autograd, if any

    def __post_init__(self) -> None:
        self.module.eval()
        params = dict(self.module.named_parameters())
        if not params:
            raise ConfigError("the model has no parameters: there is nothing to sample")
        self.names = list(params)
        self.shapes = [p.shape for p in params.values()]
        self.sizes = [p.numel() for p in params.values()]
        self.buffers = {k: b.detach() for k, b in self.module.named_buffers()}
        self._attention = has_attention(self.module)  # evaluated in a form vmap batches (attention.py)
        self._fresh_threads()
        self._per_chain_loss = vmap(self._chain_loss, in_dims=(0, 0, 0))
        self._shared_loss = vmap(self._chain_loss, in_dims=(0, None, None))
        stacked = stacked_forward(self.module)
        self.stacked = None if stacked is None else stacked[0]
        loss = next((name for name, fn in LOSSES.items() if fn is self.loss_fn), None)
        self.by_hand = None if stacked is None else stacked_backward(self.module, loss, self.compute)
        # Built-in losses treat examples one by one, so chains fold into their batch; a loss given as
        # a callable may not, and runs once per chain under vmap.
        self._example_loss = self.loss_fn if loss else vmap(self.loss_fn)

    @property
    def n_params(self) -> int:
        return sum(self.sizes)

    @property
    def macs_per_example(self) -> int:
        """A rough count of one example's multiply-adds: one per parameter (exact for dense layers)."""
        return self.n_params

    def flat_parameters(self) -> torch.Tensor:
        """The module's current weights as one flat vector [d]: the point w*."""
        return torch.cat([p.detach().reshape(-1) for p in self.module.parameters()])

    def to(self, device: torch.device) -> ModuleModel:
        """The model with its module and buffers on `device`."""
        self.module.to(device)
        self.buffers = {k: b.detach() for k, b in self.module.named_buffers()}
        self._fresh_threads()  # copies made before the move stay behind
        return self

    def __reduce__(self) -> tuple:
        """Pickled as what builds it (another process advancing a share of the chains: run/devices.py)."""
        return (ModuleModel, (self.module, self.loss_fn, self.example_dims, self.vectorized, self.exported,
                              self.compute))  # fmt: skip

    @contextmanager
    def _evaluation(self, like: torch.Tensor) -> Iterator[None]:
        """Autocast to `compute` on `like`'s device, if any (the hand-written backward casts explicitly);
        nn.MultiheadAttention in a form that vmap batches, if the module has any (attention.py)."""
        with ExitStack() as stack:
            if self._attention:
                stack.enter_context(batchable_attention())
            if self.compute is not None:
                stack.enter_context(torch.autocast(like.device.type, dtype=self.compute))
            yield

    def _state_dtype(self, output: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The model's output in the state's dtype, for the loss (a no-op without `compute`)."""
        return output if self.compute is None else output.to(like.dtype)

    def _fresh_threads(self) -> None:
        # Threads copy a template that nobody evaluates: copying `module` itself could catch it while
        # the main thread's functional_call has its parameters swapped out.
        self._threads = threading.local()
        self._template = copy.deepcopy(self.module)
        self._copying = threading.Lock()
        # The exported forward and its rewrites per input shape, dtype and device (graph_cache.py)
        self._graphs: dict[tuple, Graphs] = {}

    def _views(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-parameter views of flat parameters [..., d] (cut outside vmap: cheaper than inside)."""
        lead = flat.shape[:-1]
        pieces = flat.split(self.sizes, dim=-1)
        return {
            name: piece.view(*lead, *shape)
            for name, piece, shape in zip(self.names, pieces, self.shapes, strict=True)
        }

    def _own_module(self) -> torch.nn.Module:
        """The module this thread evaluates: functional_call swaps a module's parameters while it runs,
        so blocks of chains stepped on several threads (samplers/blocks.py) each need their own copy."""
        module = getattr(self._threads, "module", None)
        if module is None:
            if threading.current_thread() is threading.main_thread():
                module = self.module
            else:
                with self._copying:
                    module = copy.deepcopy(self._template)
            self._threads.module = module
        return module

    def _chain_loss(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean per-example loss of one chain's parameters on a batch."""
        output = functional_call(self._own_module(), (params, self.buffers), (x,))
        return self.loss_fn(self._state_dtype(output, next(iter(params.values()))), y).mean()

    def _loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss [chains] of parameters [chains, d] on x [chains, batch, ...] or a shared [batch, ...]."""
        return self._views_loss(self._views(params), x, y)

    def _graphs_for(self, example: torch.Tensor) -> Graphs:
        """The forward exported for inputs like `example` (one chain's batch), on first use, from a copy
        that nobody evaluates, or shared with an earlier module of the same structure (graph_cache.py)."""
        key = (tuple(example.shape), example.dtype, example.device)
        if key not in self._graphs:
            with self._copying:
                if key not in self._graphs:
                    self._graphs[key] = graphs_for(self._template, example)
        return self._graphs[key]

    def _chained(self, graphs: Graphs, views: dict[str, torch.Tensor], x: torch.Tensor) -> Forward | None:
        """The exported forward rewritten for this many chains (chain_graph.py), checked once against it
        under vmap; None where it cannot be rewritten."""
        chains = x.shape[0]
        exported = graphs.exported
        assert exported is not None
        if chains not in graphs.chained:
            with graphs.lock:
                if chains not in graphs.chained:
                    graphs.chained[chains] = self._checked(
                        exported, batch_over_chains(exported.program, chains), views, x
                    )
        forward = graphs.chained[chains]
        return None if forward is None else lambda params, h: forward(params, self.buffers, h)

    def _checked(
        self,
        exported: Exported,
        chained: ChainForward | None,
        views: dict[str, torch.Tensor],
        x: torch.Tensor,
    ) -> ChainForward | None:
        if chained is None:
            return None
        # In the state's dtype: the rewrite is the same under autocast, and half precision's rounding
        # would differ between the two ways of batching.
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            params = {k: v.detach() for k, v in views.items()}
            reference = vmap(exported.forward, in_dims=(0, None, 0))(params, self.buffers, x)
            try:
                torch.testing.assert_close(chained(params, self.buffers, x), reference)
            except AssertionError:
                log.warning("the chain-batched graph of the model disagrees with vmap; using vmap")
                return None
        return chained

    def _views_loss(
        self, views: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, graph: bool = True
    ) -> torch.Tensor:
        """`_loss` of per-parameter views [chains, ...]; `graph` false: through functional_call only.

        The fastest way that applies: a stack of common layers (stacked_layers.py); the exported,
        narrowed graph rewritten for all chains (chain_graph.py), or under vmap; functional_call under vmap.
        """
        chains = next(iter(views.values())).shape[0]
        per_chain = self._per_chain(x)
        forward = self.stacked
        if forward is None:
            graphs = self._graphs_for(x[0] if per_chain else x) if graph and self.exported else None
            exported = None if graphs is None else graphs.exported
            if graphs is None or exported is None:
                return (self._per_chain_loss if per_chain else self._shared_loss)(views, x, y)
            if not per_chain:
                x, y = x.expand(chains, *x.shape), y.expand(chains, *y.shape)
            forward = self._chained(graphs, views, x)
            if forward is None:
                return self._vmapped(exported.forward)(views, x, y)
        elif not per_chain:
            x, y = x.expand(chains, *x.shape), y.expand(chains, *y.shape)
        output = self._state_dtype(forward(views, x), next(iter(views.values())))
        if self._example_loss is self.loss_fn:
            folded = self.loss_fn(output.flatten(0, 1), y.flatten(0, 1))
            return folded.view(chains, -1).mean(dim=1)
        return self._example_loss(output, y).mean(dim=1)

    def _vmapped(self, forward: GraphForward) -> Callable:
        def chain_loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            output = forward(params, self.buffers, x)
            return self.loss_fn(self._state_dtype(output, next(iter(params.values()))), y).mean()

        return vmap(chain_loss)

    def _per_chain(self, x: torch.Tensor) -> bool:
        return x.dim() == self.example_dims + 2

    # ---- the interface of network.MLP ------------------------------------------------------
    def loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [chains] (mean over the batch) and its gradient [chains, d]: the forward pass batched by
        vmap, the backward by autograd through it (faster than torch.func.grad inside vmap)."""
        with self._evaluation(params):
            return self._all_loss_and_grad(params, x, y)

    def _all_loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_and_grad` in whichever precision the caller set: sequential, per chain, or in chunks."""
        if not self.vectorized:
            return self.autograd_loss_and_grad(params, x, y)
        if self._per_chain(x):
            return self._loss_and_grad(params, x, y)
        value = torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
        grad = torch.zeros_like(params)
        for rows in _chain_blocks(params, x.shape[0]):
            for xs, ys in _chunks(x, y):
                v, g = self._loss_and_grad(params[rows], xs, ys)
                value[rows].add_(v, alpha=xs.shape[0] / x.shape[0])
                grad[rows].add_(g, alpha=xs.shape[0] / x.shape[0])
        return value, grad

    def _loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor, graph: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.by_hand is not None:
            return self._loss_and_grad_by_hand(params, x, y)
        # The per-parameter views are the leaves autograd differentiates: their gradients are then
        # copied into the flat one (through the slicing, each would be a zero-filled [chains, d]).
        views = {name: view.requires_grad_(True) for name, view in self._views(_own_version(params)).items()}
        with torch.enable_grad():
            loss = self._views_loss(views, x, y, graph)
            grads = torch.autograd.grad(loss.sum(), list(views.values()))
        flat = torch.empty_like(params)
        for piece, g in zip(self._views(flat).values(), grads, strict=True):
            piece.copy_(g)  # one pass, also for a gradient autograd left transposed
        return loss.detach(), flat

    def _loss_and_grad_by_hand(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`_loss_and_grad` of a stack of common layers (stacked_backward.py): no autograd graph, each
        weight's gradient written in place, and `params` read as it is (no copy: nothing is saved)."""
        assert self.by_hand is not None
        if not self._per_chain(x):
            x, y = x.expand(params.shape[0], *x.shape), y.expand(params.shape[0], *y.shape)
        flat = torch.empty_like(params)
        loss = self.by_hand(self._views(params.detach()), x, y, self._views(flat))
        return loss, flat

    def loss_and_grad_pieces(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[slice, torch.Tensor]]]:
        value, grad = self.loss_and_grad(params, x, y)
        return value, [(slice(0, self.n_params), grad)]

    def batch_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch, one value per chain: [chains]."""
        with torch.no_grad(), self._evaluation(params):
            if not self.vectorized:
                return torch.stack(
                    [
                        self._chain_loss(self._views(w), *self._chain_batch(x, y, c))
                        for c, w in enumerate(params)
                    ]
                )
            if self._per_chain(x):
                return self._loss(params, x, y)
            value = torch.zeros(params.shape[0], dtype=params.dtype, device=params.device)
            for rows in _chain_blocks(params, x.shape[0]):
                for xs, ys in _chunks(x, y):
                    value[rows].add_(self._loss(params[rows], xs, ys), alpha=xs.shape[0] / x.shape[0])
            return value

    def autograd_loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_and_grad` one chain at a time with plain autograd: the reference, and the way to run
        a model that vmap cannot batch."""
        values, grads = [], []
        for c in range(params.shape[0]):
            w = params[c].detach().requires_grad_(True)
            with torch.enable_grad(), self._evaluation(params):
                value = self._chain_loss(self._views(w), *self._chain_batch(x, y, c))
                (grad,) = torch.autograd.grad(value, w)
            values.append(value.detach())
            grads.append(grad)
        return torch.stack(values), torch.stack(grads)

    def _chain_batch(self, x: torch.Tensor, y: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (x[c], y[c]) if self._per_chain(x) else (x, y)

    def check_on_data(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Run the model and the loss at w* on the data as they are (its first points, then all of it),
        then as the sampler will: each mistake gets one ConfigError naming it and the fix, and an error
        raised by the model's own code is reported as that, with its own message."""
        self.check_on_chunks(_chunks(x, y))

    def check_on_chunks(self, chunks: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """`check_on_data` on data given a chunk at a time (streamed data, never held whole)."""
        bad = next((n for n, p in self.module.named_parameters() if not torch.isfinite(p).all()), None)
        if bad is not None:
            raise ConfigError(f"the model's weights hold NaN or inf (in {bad!r}): w* must be finite")
        start, first = 0, None
        for xs, ys in chunks:
            if first is None:
                first = xs[:PROBE], ys[:PROBE]
                self._check_probe(*first)
            losses = self._eager_losses(xs, ys, start)
            if not torch.isfinite(losses).all():
                row = int((~torch.isfinite(losses)).nonzero()[0])
                raise ConfigError(
                    f"the loss at the model's weights is {float(losses[row])} on row {start + row} of the "
                    "data: L0 and the estimate would be too; check the model's output there"
                )
            start += xs.shape[0]
        assert first is not None
        try:  # one chain with plain autograd: what gpu_mode=sequential runs
            self.autograd_loss_and_grad(self.flat_parameters().unsqueeze(0), *first)
        except Exception as exc:
            raise ConfigError(f"the gradient of the loss cannot be taken: {_first_line(exc)}") from exc
        self.check_batchable(*first)

    def _check_probe(self, x: torch.Tensor, y: torch.Tensor) -> None:
        losses = self._eager_losses(x, y, 0)
        if not isinstance(losses, torch.Tensor) or losses.shape != (x.shape[0],):
            got = f"shape {_shape(losses)}" if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ConfigError(
                f"the loss must return one value per example, shape [batch] (use reduction='none', and "
                f"sum any other dimensions); on a batch of {x.shape[0]} it returned {got}"
            )

    def _eager_losses(self, xs: torch.Tensor, ys: torch.Tensor, start: int) -> torch.Tensor:
        """The loss of each of rows start.. at w*, the module called as it is; its errors as ConfigErrors."""
        with torch.no_grad():
            try:
                output = self.module(xs)
            except ConfigError:
                raise
            except Exception as exc:
                row = start + self._first_failing_row(xs)
                raise ConfigError(_forward_failed(exc, row, xs.shape)) from exc
            if not isinstance(output, torch.Tensor):
                raise ConfigError(_not_a_tensor(output))
            if self.loss_fn is per_example_cross_entropy:
                _check_labels(ys, output.shape[-1], start)
            try:
                return self.loss_fn(output, ys)
            except Exception as exc:
                mse = "; mse needs y with the output's shape (labels take loss='cross_entropy')"
                raise ConfigError(
                    f"the loss fails on the model's output {_shape(output)} and y {_shape(ys)} "
                    f"({_first_line(exc)}); it takes (output, target) and returns one value per example"
                    + (mse if self.loss_fn is per_example_mse else "")
                ) from exc

    def _first_failing_row(self, xs: torch.Tensor) -> int:
        """The first row of xs on which the forward fails alone or with the rows before it (bisection)."""
        lo, hi = 0, xs.shape[0]
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                self.module(xs[lo:mid])
                lo = mid
            except Exception:
                hi = mid
        return lo

    def check_batchable(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Evaluate two chains on two points through vmap; a model it cannot batch gets one ConfigError
        naming the failing construct and the fix."""
        if not self.vectorized:
            return
        w = self.flat_parameters().unsqueeze(0).expand(2, -1).clone()
        xs, ys = x[:2].unsqueeze(0).expand(2, *x[:2].shape), y[:2].unsqueeze(0).expand(2, *y[:2].shape)
        try:  # through functional_call: a forward that torch.export cannot take may still batch
            with self._evaluation(w):
                self._loss_and_grad(w, xs, ys, graph=False)
        except Exception as exc:
            raise ConfigError(
                f"the model cannot run all chains at once under torch.func.vmap ({_first_line(exc)}). vmap "
                "needs a forward pass without .item()/float()/bool() of tensors, Python control flow on "
                "tensor values, or in-place updates of buffers or inputs. Rewrite that construct, or set "
                "gpu_mode=sequential to run one chain at a time (slower)"
            ) from exc


def _own_version(t: torch.Tensor) -> torch.Tensor:
    """The memory of `t` as a tensor with a version counter of its own, not its base's. `t` is often a
    block of the sampler's state, whose other blocks another thread updates in place meanwhile
    (samplers/blocks.py): through a view, autograd would count those updates as changes to the values
    it saved and refuse the backward pass. Nothing writes this block's rows before it ends."""
    alias = torch.empty(0, dtype=t.dtype, device=t.device)
    return alias.set_(t.untyped_storage(), t.storage_offset(), t.shape, t.stride())


def _chunks(x: torch.Tensor, y: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + CHUNK], y[i : i + CHUNK]) for i in range(0, x.shape[0], CHUNK)]


def _chain_blocks(params: torch.Tensor, points: int) -> list[slice]:
    """The blocks of chains a full-data pass over `points` points takes at once: all of them, or on the
    CPU FULL_DATA_CHAINS where chains × points reach FULL_DATA_WORK."""
    chains = params.shape[0]
    small = chains * min(points, CHUNK) < FULL_DATA_WORK
    if params.device.type != "cpu" or chains <= FULL_DATA_CHAINS or small:
        return [slice(None)]
    return [slice(i, i + FULL_DATA_CHAINS) for i in range(0, chains, FULL_DATA_CHAINS)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def _shape(t: torch.Tensor) -> str:
    return str(list(t.shape))


def _forward_failed(exc: Exception, row: int, shape: torch.Size) -> str:
    """The model's own error on the data, with the input width it expects where torch names it."""
    message = (
        f"the model's forward fails on row {row} of x (x[i] of shape {list(shape[1:])}): {_first_line(exc)}"
    )
    widths = re.search(r"mat1 and mat2 shapes cannot be multiplied \(\d+x(\d+) and (\d+)x\d+\)", str(exc))
    if widths:
        return f"{message}. The model expects inputs of width {widths[2]}; x has width {widths[1]}"
    return f"{message}. Check that x has the shape, dtype and values the model takes"


def _not_a_tensor(output: object) -> str:
    if isinstance(output, dict):
        parts = [f"{k!r}: {_describe(v)}" for k, v in output.items()]
        which = f"output={next(iter(output))!r}"
    elif isinstance(output, tuple | list):
        parts = [f"[{i}] {_describe(v)}" for i, v in enumerate(output)]
        which = "output=0"
    else:
        parts, which = [], "output=..."
    held = f" ({', '.join(parts)})" if parts else ""
    return (
        f"the model's output must be a tensor, got a {type(output).__name__}{held}: say which element holds "
        f"the predictions, llc.estimate(..., {which}) (an index or a key), or wrap the model so that its "
        "forward returns that tensor"
    )


def _describe(value: object) -> str:
    return f"tensor {_shape(value)}" if isinstance(value, torch.Tensor) else type(value).__name__


def _check_labels(y: torch.Tensor, classes: int, start: int) -> None:
    """cross_entropy's targets are class indices below the number of logits."""
    outside = ((y < 0) | (y >= classes) | (y != y.long())).reshape(y.shape[0], -1)
    if outside.any():
        row = int(outside.any(dim=1).nonzero()[0])
        value = y.reshape(y.shape[0], -1)[row][outside[row]][0].item()
        raise ConfigError(
            f"cross_entropy takes integer class labels in [0, {classes}) (the model's last dimension); "
            f"y holds {value} at row {start + row}"
        )
