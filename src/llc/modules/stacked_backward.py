"""The loss and its gradient for a stack of Linear layers and elementwise activations, without autograd.

stacked_layers.py runs such a stack for all chains at once with batched matrix products and leaves
the backward pass to autograd, whose graph and engine cost as much as the arithmetic at LLC sizes.
Here the forward keeps what each layer's derivative reads, and the backward carries the loss's
gradient down the layers, writing each weight's gradient with one batched product straight into its
place in the flat gradient [chains, d]. `stacked_backward` builds this for an nn.Sequential of
nn.Linear, nn.Flatten and the activations in DERIVATIVES, with a built-in loss, and returns None for
anything else (autograd then differentiates stacked_layers' forward).

With a `compute` dtype (bfloat16 or float16: dtype=bfloat16), the products and activations run in it,
cast explicitly as autocast would (autocast cannot write into the float32 gradient through `out=`); the
loss, its gradient at the output and the parameters' gradients stay in the state's float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from llc.modules.stacked_layers import Params

aten = torch.ops.aten
# (gradient of the output, input, output) -> gradient of the input, for one activation module
Derivative = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _relu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.threshold_backward(g, a, 0)


def _leaky_relu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.leaky_relu_backward(g, z, m.negative_slope, False)


def _tanh(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.tanh_backward(g, a)


def _sigmoid(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.sigmoid_backward(g, a)


def _gelu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.gelu_backward(g, z, approximate=m.approximate)


def _silu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.silu_backward(g, z)


def _identity(m: nn.Module) -> Derivative:
    return lambda g, z, a: g


# Activations whose derivative is an ATen kernel. An in-place module overwrites its input, so those
# whose derivative reads the input (`READS_INPUT`) are taken only when not in place.
DERIVATIVES: dict[type[nn.Module], Callable[[nn.Module], Derivative]] = {
    nn.ReLU: _relu, nn.LeakyReLU: _leaky_relu, nn.Tanh: _tanh, nn.Sigmoid: _sigmoid, nn.GELU: _gelu,
    nn.SiLU: _silu, nn.Identity: _identity, nn.Dropout: _identity, nn.Dropout1d: _identity,
    nn.Dropout2d: _identity,
}  # fmt: skip
READS_INPUT = (nn.LeakyReLU, nn.SiLU)
LOSSES = ("mse", "cross_entropy")


class Layer(Protocol):
    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """The output, and what `backward` reads."""
        ...

    def backward(
        self, params: Params, saved: Any, g: torch.Tensor, grads: Params, need_input: bool
    ) -> torch.Tensor | None:
        """Writes the parameters' gradients into `grads`; the input's gradient if `need_input`."""
        ...


@dataclass(frozen=True)
class _Linear:
    weight: str
    bias: str | None
    compute: torch.dtype | None = None  # the products' dtype when lower than the state's

    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        weight = params[self.weight] if self.compute is None else params[self.weight].to(self.compute)
        w = weight.transpose(1, 2)  # [chains, in, out]
        rows = h.reshape(h.shape[0], -1, h.shape[-1])
        if self.bias is None:
            out = torch.bmm(rows, w)
        else:
            bias = params[self.bias].unsqueeze(1)
            out = torch.baddbmm(bias if self.compute is None else bias.to(self.compute), rows, w)
        return out.view(*h.shape[:-1], out.shape[-1]), (rows, h.shape, weight)

    def backward(
        self, params: Params, saved: Any, g: torch.Tensor, grads: Params, need_input: bool
    ) -> torch.Tensor | None:
        rows, shape, weight = saved
        g = g.reshape(rows.shape[0], -1, g.shape[-1])  # [chains, rows, out]
        if self.compute is None:
            torch.bmm(g.transpose(1, 2), rows, out=grads[self.weight])
            if self.bias is not None:
                torch.sum(g, dim=1, out=grads[self.bias])
        else:
            grads[self.weight].copy_(torch.bmm(g.transpose(1, 2), rows))
            if self.bias is not None:
                torch.sum(g, dim=1, dtype=grads[self.bias].dtype, out=grads[self.bias])
        return torch.bmm(g, weight).view(shape) if need_input else None


@dataclass(frozen=True)
class _Activation:
    module: nn.Module
    derivative: Derivative

    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        out = self.module(h)
        return out, (h, out)

    def backward(
        self, params: Params, saved: Any, g: torch.Tensor, grads: Params, need_input: bool
    ) -> torch.Tensor | None:
        return self.derivative(g, *saved) if need_input else None


@dataclass(frozen=True)
class _Flatten:
    start: int
    end: int

    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return h.flatten(self.start, self.end), h.shape

    def backward(
        self, params: Params, saved: Any, g: torch.Tensor, grads: Params, need_input: bool
    ) -> torch.Tensor | None:
        return g.reshape(saved) if need_input else None


@dataclass(frozen=True)
class StackedGradient:
    """Mean loss [chains] over a batch and its gradient, written into `grads` (views of the flat gradient
    [chains, ...] per parameter name)."""

    layers: list[Layer]
    loss: str
    compute: torch.dtype | None = None

    def __call__(self, params: Params, x: torch.Tensor, y: torch.Tensor, grads: Params) -> torch.Tensor:
        saved, h = [], x if self.compute is None or not x.is_floating_point() else x.to(self.compute)
        for layer in self.layers:
            h, keep = layer.forward(params, h)
            saved.append(keep)
        state = next(iter(grads.values())).dtype
        value, g = _loss_and_output_grad(self.loss, h.to(state), y)
        if self.compute is not None:
            g = g.to(self.compute)
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(params, saved[i], g, grads, need_input=i > 0)  # type: ignore[assignment]
        return value


def _loss_and_output_grad(loss: str, out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean per-example loss [chains] (as module_model's LOSSES compute it) and its gradient with
    respect to the output [chains, batch, ...]."""
    chains, batch = out.shape[:2]
    if loss == "cross_entropy":
        lse = torch.logsumexp(out, dim=-1, keepdim=True)
        targets = y.long().unsqueeze(-1)
        per_example = (lse - out.gather(-1, targets)).reshape(chains, batch, -1).sum(dim=2)
        g = torch.exp(out - lse)  # softmax, less one at each target
        minus_one = torch.full((1,), -1.0, dtype=g.dtype, device=g.device)
        g.scatter_add_(-1, targets, minus_one.expand(targets.shape))
        return per_example.mean(dim=1), g.mul_(1.0 / batch)
    resid = out - y.reshape(out.shape)
    per_example = resid.square().reshape(chains, batch, -1).sum(dim=2)
    return per_example.mean(dim=1), resid.mul_(2.0 / batch)


def stacked_backward(
    module: nn.Module, loss: str | None, compute: torch.dtype | None = None
) -> StackedGradient | None:
    """The hand-written loss and gradient of `module` under the built-in loss named `loss`, or None
    when the module is not a stack of layers known here or the loss is not built in."""
    if loss not in LOSSES:
        return None
    layers: list[Layer] = []
    found = _collect(module, "", layers, compute)
    return StackedGradient(layers, loss, compute) if found and layers else None


def _collect(module: nn.Module, prefix: str, layers: list[Layer], compute: torch.dtype | None) -> bool:
    """Append the layers of `module` (whose parameters are named after `prefix`) in order; False when
    some part of it is not a layer known here."""
    if module._forward_hooks or module._forward_pre_hooks or list(module.buffers(recurse=False)):
        return False
    if type(module) is nn.Sequential:
        return all(
            _collect(child, f"{prefix}{name}.", layers, compute) for name, child in module._modules.items()
        )
    layer = _layer(module, prefix, compute)
    if layer is not None:
        layers.append(layer)
    return layer is not None


def _layer(module: nn.Module, prefix: str, compute: torch.dtype | None) -> Layer | None:
    kind = type(module)
    if kind is nn.Linear:
        assert isinstance(module, nn.Linear)
        return _Linear(f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None, compute)
    if kind is nn.Flatten:
        assert isinstance(module, nn.Flatten)
        start, end = (d + 1 if d >= 0 else d for d in (module.start_dim, module.end_dim))  # past the chains
        return _Flatten(start, end)
    derivative = DERIVATIVES.get(kind)
    if derivative is None or (kind in READS_INPUT and getattr(module, "inplace", False)):
        return None
    return _Activation(module, derivative(module))
