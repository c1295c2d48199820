"""The loss and its gradient for a stack of Linear layers and elementwise activations, without autograd.

stacked_layers.py runs such a stack for all chains at once with batched matrix products and leaves
the backward pass to autograd, whose graph and engine cost as much as the arithmetic at LLC sizes.
Here the forward keeps what each layer's derivative reads, and the backward carries the loss's
gradient down the layers, writing each weight's gradient with one batched product straight into its
place in the flat gradient [chains, d]. `stacked_backward` builds this for an nn.Sequential of
nn.Linear, nn.Flatten and the activations in DERIVATIVES, with a built-in loss, and returns None for
anything else (autograd then differentiates stacked_layers' forward).
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


# Each backward below may overwrite g: the gradient carried down is always a fresh tensor of its own.
def _relu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.threshold_backward.grad_input(g, a, 0, grad_input=g)


def _leaky_relu(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.leaky_relu_backward(g, z, m.negative_slope, False)


def _tanh(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.tanh_backward.grad_input(g, a, grad_input=g)


def _sigmoid(m: nn.Module) -> Derivative:
    return lambda g, z, a: aten.sigmoid_backward.grad_input(g, a, grad_input=g)


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
# Activations whose derivative reads only their output: after a Linear layer (whose output nothing
# else keeps) they overwrite it, sparing a [chains, batch, width] tensor and a pass over memory.
IN_PLACE: dict[type[nn.Module], Callable[[torch.Tensor], torch.Tensor]] = {
    nn.ReLU: torch.relu_, nn.Tanh: torch.tanh_, nn.Sigmoid: torch.sigmoid_,
}  # fmt: skip
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

    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        w = params[self.weight].transpose(1, 2)  # [chains, in, out]
        rows = h.reshape(h.shape[0], -1, h.shape[-1])
        if self.bias is None:
            out = torch.bmm(rows, w)
        else:
            out = torch.baddbmm(params[self.bias].unsqueeze(1), rows, w)
        return out.view(*h.shape[:-1], out.shape[-1]), (rows, h.shape)

    def backward(
        self, params: Params, saved: Any, g: torch.Tensor, grads: Params, need_input: bool
    ) -> torch.Tensor | None:
        rows, shape = saved
        g = g.reshape(rows.shape[0], -1, g.shape[-1])  # [chains, rows, out]
        torch.bmm(g.transpose(1, 2), rows, out=grads[self.weight])
        if self.bias is not None:
            torch.sum(g, dim=1, out=grads[self.bias])
        return torch.bmm(g, params[self.weight]).view(shape) if need_input else None


@dataclass(frozen=True)
class _Activation:
    module: nn.Module
    derivative: Derivative
    in_place: Callable[[torch.Tensor], torch.Tensor] | None = None  # IN_PLACE's, when its input is its own

    def forward(self, params: Params, h: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if self.in_place is not None:
            out = self.in_place(h)
            return out, (None, out)
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

    def __call__(self, params: Params, x: torch.Tensor, y: torch.Tensor, grads: Params) -> torch.Tensor:
        saved, h = [], x
        for layer in self.layers:
            h, keep = layer.forward(params, h)
            saved.append(keep)
        value, g = _loss_and_output_grad(self.loss, h, y)
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


def stacked_backward(module: nn.Module, loss: str | None) -> StackedGradient | None:
    """The hand-written loss and gradient of `module` under the built-in loss named `loss`, or None
    when the module is not a stack of layers known here or the loss is not built in."""
    if loss not in LOSSES:
        return None
    layers: list[Layer] = []
    return StackedGradient(layers, loss) if _collect(module, "", layers) and layers else None


def _collect(module: nn.Module, prefix: str, layers: list[Layer]) -> bool:
    """Append the layers of `module` (whose parameters are named after `prefix`) in order; False when
    some part of it is not a layer known here."""
    if module._forward_hooks or module._forward_pre_hooks or list(module.buffers(recurse=False)):
        return False
    if type(module) is nn.Sequential:
        return all(_collect(child, f"{prefix}{name}.", layers) for name, child in module._modules.items())
    layer = _layer(module, prefix)
    if isinstance(layer, _Activation) and layers and isinstance(layers[-1], _Linear):
        layer = _Activation(layer.module, layer.derivative, IN_PLACE.get(type(module)))
    if layer is not None:
        layers.append(layer)
    return layer is not None


def _layer(module: nn.Module, prefix: str) -> Layer | None:
    kind = type(module)
    if kind is nn.Linear:
        assert isinstance(module, nn.Linear)
        return _Linear(f"{prefix}weight", f"{prefix}bias" if module.bias is not None else None)
    if kind is nn.Flatten:
        assert isinstance(module, nn.Flatten)
        start, end = (d + 1 if d >= 0 else d for d in (module.start_dim, module.end_dim))  # past the chains
        return _Flatten(start, end)
    derivative = DERIVATIVES.get(kind)
    if derivative is None or (kind in READS_INPUT and getattr(module, "inplace", False)):
        return None
    return _Activation(module, derivative(module))
