"""A multilayer perceptron evaluated for many parameter vectors ("chains") at once.

Parameters live in one flat tensor of shape [chains, d]. The forward pass and the gradient of the
loss are written out by hand as batched matrix products: at the sizes LLC estimation uses, that is
several times faster than autograd or torch.func.vmap, and it keeps every chain of a run in one
computation. `autograd_loss` gives the same loss through plain autograd and serves as the
reference in tests and in the sequential mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
                return torch.baddbmm(b, h, w) if b is not None else torch.bmm(h, w)
            h = _activate(self.activation, self._pre_activation(h, w, b), in_place=True)
        raise AssertionError("unreachable: an MLP has at least one layer")

    def _pre_activation(self, h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        # tanh is computed as 2*sigmoid(2z) - 1 (four times faster on CPU), so produce 2z directly.
        scale = 2.0 if self.activation == "tanh" else 1.0
        if b is None:
            return torch.bmm(h, w).mul_(scale) if scale != 1.0 else torch.bmm(h, w)
        return torch.baddbmm(b, h, w, beta=scale, alpha=scale)

    def batch_loss(self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean loss over the batch, one value per chain: [chains]."""
        return _loss_value(self.loss, self.forward(params, x) - _chainwise(y, params.shape[0]))

    def loss_and_grad(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [chains] and its gradient [chains, d], by a hand-written backward pass."""
        chains = params.shape[0]
        h = x.expand(chains, *x.shape) if x.dim() == 2 else x
        weights = self._weights(params)
        inputs, pre = [h], []
        for i, (w, b) in enumerate(weights):
            if i == len(weights) - 1:
                h = torch.baddbmm(b, h, w) if b is not None else torch.bmm(h, w)
                break
            z = self._pre_activation(h, w, b)
            pre.append(z)
            h = _activate(self.activation, z, in_place=self.activation in ("tanh", "identity"))
            inputs.append(h)
        resid = h - _chainwise(y, chains)
        value = _loss_value(self.loss, resid)
        delta = _loss_grad(self.loss, resid)
        grad = torch.empty_like(params)
        for i in range(len(weights) - 1, -1, -1):
            layer, (w, _) = self.layers[i], weights[i]
            grad[:, layer.weight] = torch.bmm(inputs[i].transpose(1, 2), delta).reshape(chains, -1)
            if layer.bias is not None:
                grad[:, layer.bias] = delta.sum(dim=1)
            if i > 0:
                delta = _activation_backward(
                    self.activation, torch.bmm(delta, w.transpose(1, 2)), pre[i - 1], inputs[i]
                )
        return value, grad

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
