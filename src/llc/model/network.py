"""A multilayer perceptron evaluated for many parameter vectors ("chains") at once.

Parameters live in one flat tensor of shape [chains, d]. The forward pass and the gradient of the
loss are written out by hand as batched matrix products: at the sizes LLC estimation uses, that is
several times faster than autograd or torch.func.vmap, and it keeps every chain of a run in one
computation. `autograd_loss` gives the same loss through plain autograd and serves as the
reference in tests and in the sequential mode.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch

ACTIVATIONS = ("relu", "tanh", "gelu", "identity")
LOSSES = ("mse", "t_regression")
T_REGRESSION_DOF = 4.0


@dataclass(frozen=True)
class Layer:
    fan_in: int
    fan_out: int
    weight: slice
    bias: slice | None


@dataclass(frozen=True)
class MLP:
    """Architecture: widths [input, hidden..., output], one activation between layers, optional biases."""

    widths: tuple[int, ...]
    activation: str = "tanh"
    bias: bool = True
    loss: str = "mse"
    auto_compile: ClassVar[bool] = True  # compile=auto may compile its steps (samplers/driver.py)

    def __post_init__(self) -> None:
        if len(self.widths) < 2:
            raise ValueError(f"widths needs at least input and output sizes, got {list(self.widths)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {self.activation!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def layers(self) -> list[Layer]:
        layers, start = [], 0
        for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:], strict=True):
            w = slice(start, start + fan_in * fan_out)
            start = w.stop
            b = None
            if self.bias:
                b = slice(start, start + fan_out)
                start = b.stop
            layers.append(Layer(fan_in, fan_out, w, b))
        return layers

    @property
    def macs_per_example(self) -> int:
        """Multiply-adds of one example's forward pass."""
        return sum(a * b for a, b in itertools.pairwise(self.widths))

    @property
    def n_params(self) -> int:
        return self.layers[-1].bias.stop if self.bias else self.layers[-1].weight.stop

    def init(
        self, chains: int, generator: torch.Generator, dtype: torch.dtype = torch.float32
    ) -> torch.Tensor:
        """Kaiming-uniform weights (as torch.nn.Linear does), zero biases: [chains, d]."""
        params = torch.zeros(chains, self.n_params, dtype=dtype)
        for layer in self.layers:
            bound = 1.0 / math.sqrt(layer.fan_in)
            n = layer.fan_in * layer.fan_out
            params[:, layer.weight] = (
                torch.rand(chains, n, generator=generator, dtype=dtype) * 2 - 1
            ) * bound
        return params

    # ---- forward / backward -------------------------------------------------------------
    def _weights(self, params: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
        chains = params.shape[0]
        out = []
        for layer in self.layers:
            w = params[:, layer.weight].view(chains, layer.fan_in, layer.fan_out)
            b = params[:, layer.bias].unsqueeze(1) if layer.bias is not None else None
            out.append((w, b))
        return out

    def forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Outputs [chains, batch, out] for inputs x of shape [batch, in] or [chains, batch, in]."""
        h = x.expand(params.shape[0], *x.shape) if x.dim() == 2 else x
        weights = self._weights(params)
        for i, (w, b) in enumerate(weights):
            if i == len(weights) - 1:
                return _affine(h, w, b)
            h = _activate(self.activation, self._pre_activation(h, w, b), in_place=True)
        raise AssertionError("unreachable: an MLP has at least one layer")

    def _pre_activation(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # tanh is computed as 2*sigmoid(2z) - 1 (four times faster on CPU), so produce 2z directly.
        scale = 2.0 if self.activation == "tanh" else 1.0
        return _affine(h, w, b, alpha=scale, beta=scale)

    def batch_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch, one value per chain: [chains]."""
        return _loss_value(self.loss, self.forward(params, x) - _chainwise(y, params.shape[0]))

    def loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [chains] and its gradient [chains, d], by a hand-written backward pass."""
        if self.activation == "tanh":
            value, pieces = self._tanh_loss_and_grad(params, x, y)
            grad = torch.empty_like(params)
            for columns, piece in pieces:
                grad[:, columns] = piece
            return value, grad
        chains = params.shape[0]
        h = x.expand(chains, *x.shape) if x.dim() == 2 else x
        weights = self._weights(params)
        inputs, pre = [h], []
        for i, (w, b) in enumerate(weights):
            if i == len(weights) - 1:
                h = _affine(h, w, b)
                break
            z = self._pre_activation(h, w, b)
            pre.append(z)
            h = _activate(self.activation, z, in_place=self.activation == "identity")
            inputs.append(h)
        resid = h - _chainwise(y, chains)
        value = _loss_value(self.loss, resid)
        delta = _loss_grad(self.loss, resid)
        grad = torch.empty_like(params)
        for i in range(len(weights) - 1, -1, -1):
            layer, (w, _) = self.layers[i], weights[i]
            grad[:, layer.weight] = _weight_grad(inputs[i], delta).reshape(chains, -1)
            if layer.bias is not None:
                grad[:, layer.bias] = delta.sum(dim=1)
            if i > 0:
                delta = _activation_backward(self.activation, _backprop(delta, w), pre[i - 1], inputs[i])
        return value, grad

    def loss_and_grad_pieces(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[slice, torch.Tensor]]]:
        """Loss [chains] and the gradient as (columns of the flat parameters, block [chains, n]) pairs,
        without assembling the flat gradient: a compiled step updates each block where it lies."""
        if self.activation == "tanh":
            return self._tanh_loss_and_grad(params, x, y)
        value, grad = self.loss_and_grad(params, x, y)
        return value, [(slice(0, self.n_params), grad)]

    def _tanh_loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, list[tuple[slice, torch.Tensor]]]:
        """`loss_and_grad_pieces` for tanh networks in as few passes over the [chains, batch, width]
        tensors as possible, since at LLC sizes those passes, not the matrix products, bound the speed.

        A hidden layer keeps s = sigmoid(2z) instead of h = tanh(z) = 2s - 1: the affine map 2s - 1 is
        folded into the next layer's (small) weights and bias, and tanh'(z) = 4·s·(1 - s) is formed in
        place in s once the weight gradient no longer needs it. The backward signal is carried without
        the factors 4, which are applied to the (small) gradient blocks instead.
        """
        chains = params.shape[0]
        a = x.expand(chains, *x.shape) if x.dim() == 2 else x
        weights = self._weights(params)
        last = len(weights) - 1
        inputs: list[torch.Tensor] = [a]
        for i, (w, b) in enumerate(weights):
            # Input h = c·a + d, with (c, d) = (1, 0) for the data and (2, -1) after a hidden layer.
            c, d = (1.0, 0.0) if i == 0 else (2.0, -1.0)
            bias = b
            if d != 0.0:  # h = 2s - 1: the -1 shifts the bias by -Σ_in w
                shift = w.sum(dim=1, keepdim=True)
                bias = -shift if b is None else b - shift
            scale = 1.0 if i == last else 2.0  # a hidden layer computes 2z for sigmoid(2z)
            out = _affine(a, w, bias, alpha=scale * c, beta=scale)
            if i == last:
                break
            a = torch.sigmoid_(out)
            inputs.append(a)
        resid = out.sub_(_chainwise(y, chains))
        value = _loss_value(self.loss, resid)
        delta = _loss_grad(self.loss, resid)
        pieces: list[tuple[slice, torch.Tensor]] = []
        k = 1.0  # the true backward signal is k · delta
        for i in range(last, -1, -1):
            layer, (w, _) = self.layers[i], weights[i]
            c, d = (1.0, 0.0) if i == 0 else (2.0, -1.0)
            g_w = _weight_grad(inputs[i], delta).mul_(k * c)  # [chains, fan_in, fan_out]
            if layer.bias is not None or d != 0.0:
                delta_sum = delta.sum(dim=1, keepdim=True)
                if d != 0.0:
                    g_w.add_(delta_sum, alpha=k * d)
                if layer.bias is not None:
                    pieces.append((layer.bias, delta_sum.squeeze(1).mul_(k)))
            pieces.append((layer.weight, g_w.reshape(chains, -1)))
            if i > 0:
                s = inputs[i]
                delta = _backprop(delta, w).mul_(torch.addcmul(s, s, s, value=-1.0, out=s))  # s·(1 - s)
                k *= 4.0
        return value, pieces

    def reference_forward(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The forward pass in plain, out-of-place torch ops: the independent reference for tests."""
        h = x.expand(params.shape[0], *x.shape) if x.dim() == 2 else x
        activation = {"tanh": torch.tanh, "relu": torch.relu, "gelu": torch.nn.functional.gelu}
        weights = self._weights(params)
        for i, (w, b) in enumerate(weights):
            h = h @ w + (b if b is not None else 0)
            if i < len(weights) - 1:
                h = activation.get(self.activation, lambda t: t)(h)
        return h

    def autograd_loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`loss_and_grad` through autograd: the reference the hand-written pass is tested against."""
        p = params.detach().requires_grad_(True)
        value = _loss_value(self.loss, self.reference_forward(p, x) - _chainwise(y, p.shape[0]))
        (grad,) = torch.autograd.grad(value.sum(), p)
        return value.detach(), grad


# Batched products whose output has this few columns run far faster transposed (a row per chain): at
# 64 chains, h @ w with w of one column takes 1.2 ms as bmm and 0.13 ms as (wᵀ hᵀ)ᵀ.
NARROW = 4


def _affine(
    a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, alpha: float = 1.0, beta: float = 1.0
) -> torch.Tensor:
    """beta·bias + alpha·(a @ w) for a [chains, batch, fan_in], w [chains, fan_in, fan_out]."""
    if w.shape[2] <= NARROW:
        wt, at = w.transpose(1, 2), a.transpose(1, 2)
        if bias is None:
            out = torch.bmm(wt, at)
            return (out.mul_(alpha) if alpha != 1.0 else out).transpose(1, 2)
        return torch.baddbmm(bias.transpose(1, 2), wt, at, beta=beta, alpha=alpha).transpose(1, 2)
    if bias is None:
        out = torch.bmm(a, w)
        return out.mul_(alpha) if alpha != 1.0 else out
    return torch.baddbmm(bias, a, w, beta=beta, alpha=alpha)


def _weight_grad(a: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """aᵀ @ delta: [chains, fan_in, fan_out]."""
    if delta.shape[2] <= NARROW:
        return torch.bmm(delta.transpose(1, 2), a).transpose(1, 2)
    return torch.bmm(a.transpose(1, 2), delta)


def _backprop(delta: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """delta @ wᵀ: [chains, batch, fan_in]; an outer product when the layer has one output."""
    if w.shape[2] == 1:
        return delta * w.transpose(1, 2)
    return torch.bmm(delta, w.transpose(1, 2))


def _chainwise(y: torch.Tensor, chains: int) -> torch.Tensor:
    return y.expand(chains, *y.shape) if y.dim() == 2 else y


def _activate(name: str, z: torch.Tensor, in_place: bool) -> torch.Tensor:
    """Activation of z; for tanh, z holds 2*(pre-activation) (see `_pre_activation`)."""
    if name == "tanh":
        s = torch.sigmoid_(z) if in_place else torch.sigmoid(z)
        return s.mul_(2).sub_(1)
    if name == "relu":
        return torch.relu(z)
    if name == "gelu":
        return torch.nn.functional.gelu(z)
    return z


def _activation_backward(name: str, upstream: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if name == "tanh":
        return torch.addcmul(upstream, upstream * h, h, value=-1)
    if name == "relu":
        return upstream.mul_(z > 0)
    if name == "gelu":
        cdf = 0.5 * (1 + torch.erf(z * (1 / math.sqrt(2))))
        pdf = torch.exp(-0.5 * z * z) * (1 / math.sqrt(2 * math.pi))
        return upstream.mul_(cdf + z * pdf)
    return upstream


def _loss_value(name: str, resid: torch.Tensor) -> torch.Tensor:
    """Per-chain mean over the batch of the per-example loss (summed over outputs)."""
    if name == "mse":
        return resid.square().sum(dim=2).mean(dim=1)
    nu = T_REGRESSION_DOF
    return (0.5 * (nu + 1) * torch.log1p(resid.square() / nu)).sum(dim=2).mean(dim=1)


def _loss_grad(name: str, resid: torch.Tensor) -> torch.Tensor:
    """d(loss)/d(output), including the 1/batch of the mean."""
    batch = resid.shape[1]
    if name == "mse":
        return resid * (2.0 / batch)
    nu = T_REGRESSION_DOF
    return resid * ((nu + 1) / batch) / (nu + resid.square())
