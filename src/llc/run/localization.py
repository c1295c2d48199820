"""gamma=auto: the localization strength decided from w* itself (your own model's default).

Along the gradient g = nβ·∇L_n(w*) the posterior's mean moves downhill, and the estimate falls with it:
in a direction of curvature h (of nβ·L_n) under localization γ, by |g|²·(h + 2γ) / (2·(h + γ)²), at most
|g|²/γ (a flat direction). At a minimum g is about 0, and weak localization (γ = 1) lets the chains fill
the basin, as the known-λ problems need; where that bound is not small, w* is no minimum (a checkpoint
mid-training) and γ = 100 holds the chains near it, estimating the localized LLC there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llc.model.protocol import Model

WEAK_GAMMA = 1.0
STRONG_GAMMA = 100.0
# The most the gradient at w* may shift the estimate (in units of the LLC) for w* to count as a minimum:
# a tenth of the smallest λ a parameter can add among the devinterp cases (1/2 per regular direction,
# 1/4 at a normal crossing of power 2) would be 0.025-0.05; 0.05 keeps trained networks' round-off out.
MINIMUM_SHIFT = 0.05


@dataclass(frozen=True)
class Localization:
    gamma: float
    reason: str
    gradient_shift: float  # nβ²·|∇L_n(w*)|² / WEAK_GAMMA: how far the gradient could move the estimate


def decide(
    model: Model, x: torch.Tensor, y: torch.Tensor, w_star: torch.Tensor, nbeta: float
) -> Localization:
    """γ for a run at w*: weak where the full-data gradient at w* is too small to move the estimate."""
    _, grad = model.loss_and_grad(w_star.unsqueeze(0), x, y)
    norm = nbeta * float(grad.double().norm())
    shift = norm**2 / WEAK_GAMMA
    if shift <= MINIMUM_SHIFT:
        return Localization(
            WEAK_GAMMA,
            f"w* is a minimum: nβ·|∇L(w*)| = {norm:.3g} can shift the estimate by at most "
            f"{shift:.3g} <= {MINIMUM_SHIFT} at gamma={WEAK_GAMMA:g}, which lets the chains fill its basin",
            shift,
        )
    return Localization(
        STRONG_GAMMA,
        f"w* is not a minimum: nβ·|∇L(w*)| = {norm:.3g} would shift the estimate by up to {shift:.3g} at "
        f"gamma={WEAK_GAMMA:g}; gamma={STRONG_GAMMA:g} holds the chains near w* (at most "
        f"{norm**2 / STRONG_GAMMA:.3g}), and the estimate is the localized LLC there, below λ",
        shift,
    )
