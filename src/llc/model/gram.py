"""Full-data MSE of a deep linear network from the data's second moments: exact, and independent of n.

For y ≈ x·W with end-to-end map W = W1·W2·…·WL,

    L(W) = tr(Wᵀ Sxx W) - 2·tr(Sxyᵀ W) + syy,   Sxx = xᵀx/n, Sxy = xᵀy/n, syy = mean ||y||²,
    ∂L/∂W = 2·(Sxx W - Sxy),   ∂L/∂Wk = (W1…Wk-1)ᵀ · ∂L/∂W · (Wk+1…WL)ᵀ.

Full-batch samplers (hmc, mclmc) on the analytic problems then cost O(widths³) per gradient
instead of O(n·widths²). Sums are taken in float64 so the cancellation in L costs no precision.
"""

from __future__ import annotations

import torch

from llc.model.network import MLP


def supports(model: MLP) -> bool:
    """Whether the model is a bias-free linear network with the mse loss."""
    return model.activation == "identity" and not model.bias and model.loss == "mse"


class GramLoss:
    """A drop-in for MLP.loss_and_grad on the full data set of a deep linear network."""

    def __init__(self, model: MLP, x: torch.Tensor, y: torch.Tensor) -> None:
        if not supports(model):
            raise ValueError("GramLoss needs a bias-free linear network (activation identity) with mse loss")
        self.model = model
        self.n = n = x.shape[0]
        x64, y64 = x.double(), y.double()
        self.sxx = x64.T @ x64 / n
        self.sxy = x64.T @ y64 / n
        self.syy = float(y64.square().sum(dim=1).mean())

    def __call__(
        self, params: torch.Tensor, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss [chains] and gradient [chains, d]; x and y must be the data the statistics came from."""
        if x.shape[-2] != self.n:
            raise ValueError(
                f"GramLoss holds the statistics of all {self.n} points; got a batch of {x.shape[-2]}"
            )
        chains = params.shape[0]
        layers = self.model.layers
        weights = [params[:, la.weight].double().view(chains, la.fan_in, la.fan_out) for la in layers]
        # prefix[k] = W1…Wk (identity for k = 0); suffix[k] = Wk+1…WL.
        prefix = [
            torch.eye(layers[0].fan_in, dtype=torch.float64, device=params.device).expand(chains, -1, -1)
        ]
        for w in weights:
            prefix.append(prefix[-1] @ w)
        suffix = [
            torch.eye(layers[-1].fan_out, dtype=torch.float64, device=params.device).expand(chains, -1, -1)
        ]
        for w in reversed(weights):
            suffix.append(w @ suffix[-1])
        suffix.reverse()
        end_to_end = prefix[-1]
        sxx_w = self.sxx @ end_to_end
        loss = (end_to_end * sxx_w).sum(dim=(1, 2)) - 2 * (self.sxy * end_to_end).sum(dim=(1, 2)) + self.syy
        g = 2 * (sxx_w - self.sxy)
        grad = torch.empty_like(params)
        for k, layer in enumerate(layers):
            grad_k = prefix[k].transpose(1, 2) @ g @ suffix[k + 1].transpose(1, 2)
            grad[:, layer.weight] = grad_k.reshape(chains, -1).to(params.dtype)
        return loss.to(params.dtype), grad
