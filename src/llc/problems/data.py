"""Input distributions and observation noise for synthetic regression data."""

from __future__ import annotations

import torch


def sample_inputs(kind: str, n: int, dim: int, gen: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    """n inputs of dimension dim from the named distribution: [n, dim]."""
    z = torch.randn(n, dim, generator=gen, dtype=dtype)
    if kind == "gauss_iso":
        return z
    if kind == "gauss_aniso":
        # Scales spanning two orders of magnitude: an ill-conditioned Hessian.
        return z * torch.logspace(-1, 1, dim, dtype=dtype)
    if kind == "mixture":
        centers = 2.0 * torch.randn(4, dim, generator=gen, dtype=dtype)
        which = torch.randint(0, 4, (n,), generator=gen)
        return centers[which] + 0.5 * z
    if kind == "lowdim_manifold":
        k = max(1, dim // 4)
        basis = torch.randn(k, dim, generator=gen, dtype=dtype) / k**0.5
        return torch.randn(n, k, generator=gen, dtype=dtype) @ basis + 0.01 * z
    if kind == "heavy_tail":
        dof = 3.0
        chi2 = torch.distributions.Chi2(torch.tensor(dof, dtype=dtype)).sample((n, 1))
        return z / torch.sqrt(chi2 / dof)
    raise ValueError(f"unknown x_dist {kind!r}")


def add_noise(
    kind: str, clean: torch.Tensor, x: torch.Tensor, scale: float, gen: torch.Generator
) -> torch.Tensor:
    """Observations y = clean + noise of the named kind, scaled by `scale`."""
    eps = torch.randn(clean.shape, generator=gen, dtype=clean.dtype)
    if kind == "gauss":
        return clean + scale * eps
    if kind == "hetero":
        # Noise that grows with the first input coordinate.
        return clean + scale * (0.5 + torch.sigmoid(x[:, :1])) * eps
    if kind == "student_t":
        u = torch.rand(clean.shape, generator=gen, dtype=clean.dtype)
        t = torch.distributions.StudentT(torch.tensor(3.0, dtype=clean.dtype)).icdf(u.clamp(1e-6, 1 - 1e-6))
        return clean + scale * t
    if kind == "outliers":
        # Five percent of points carry ten times the noise.
        outlier = torch.rand(clean.shape[0], 1, generator=gen, dtype=clean.dtype) < 0.05
        return clean + scale * eps * torch.where(outlier, 10.0, 1.0)
    raise ValueError(f"unknown noise {kind!r}")
