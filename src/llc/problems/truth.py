"""True learning coefficients of the models whose value is known in closed form.

Widths are given input-first throughout: ``widths[0]`` is the input size, ``widths[-1]`` the output size.
Arithmetic is exact (``Fraction``) and converted to ``float`` only on return, so that comparisons between
the formulas in tests are not blurred by rounding.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from math import ceil

__all__ = [
    "dln_learning_coefficient",
    "dln_multiplicity",
    "linear_learning_coefficient",
    "rrr_learning_coefficient",
    "true_learning_coefficient",
]


def _as_int(value: object) -> int | None:
    # operator.index accepts numpy integers from config sweeps but refuses floats such as 2.0.
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        return None


def _check_size(name: str, value: int) -> int:
    v = _as_int(value)
    if v is None or v < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return v


def _check_rank(rank: int, upper: int, bound: str) -> int:
    v = _as_int(rank)
    if v is None or not 0 <= v <= upper:
        raise ValueError(f"rank must be an integer in 0..{upper} (0 <= rank <= {bound}), got {rank!r}")
    return v


def linear_learning_coefficient(in_dim: int, out_dim: int) -> float:
    """Regular model y = W x with W of shape (out_dim, in_dim): lambda = d/2 = M*N/2."""
    m = _check_size("in_dim", in_dim)
    n = _check_size("out_dim", out_dim)
    return m * n / 2


def _rrr_exact(m: int, h: int, n: int, r: int) -> Fraction:
    # The three "otherwise" cases are exactly the negations of the first case's three conditions,
    # and at most one of them can fail because r <= min(M, H, N).
    if m + h < n + r:
        return Fraction(h * m - h * r + n * r, 2)
    if n + h < m + r:
        return Fraction(h * n - h * r + m * r, 2)
    if m + n < h + r:
        return Fraction(m * n, 2)
    numerator = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    if (m + n + h + r) % 2 == 1:
        numerator += 1
    return Fraction(numerator, 8)


def rrr_learning_coefficient(in_dim: int, hidden: int, out_dim: int, rank: int) -> float:
    """Reduced-rank regression M -> H -> N with true rank r (Aoyagi & Watanabe 2005)."""
    m = _check_size("in_dim", in_dim)
    h = _check_size("hidden", hidden)
    n = _check_size("out_dim", out_dim)
    r = _check_rank(rank, min(m, h, n), "min(in_dim, hidden, out_dim)")
    return float(_rrr_exact(m, h, n, r))


@dataclass(frozen=True)
class _DlnTerms:
    value: Fraction
    multiplicity: int


def _check_dln(widths: Sequence[int], rank: int) -> tuple[list[int], int]:
    raw = list(widths)
    if len(raw) < 2:
        raise ValueError(f"widths must list at least 2 sizes (input and output), got {len(raw)}")
    hs = [_check_size(f"widths[{i}]", h) for i, h in enumerate(raw)]
    return hs, _check_rank(rank, min(hs), "min(widths)")


def _dln_exact(widths: Sequence[int], rank: int) -> _DlnTerms:
    hs, rank = _check_dln(widths, rank)
    deltas = sorted(h - rank for h in hs)
    for k in range(1, len(deltas) + 1):
        sigma, rest = deltas[:k], deltas[k:]
        ell = k - 1
        s = sum(sigma)
        # Sorted, so max(sigma) < min(rest) fails exactly when a tie straddles the cut.
        if rest and not sigma[-1] < rest[0]:
            continue
        if not s >= ell * sigma[-1]:
            continue
        if rest and not s < ell * rest[0]:
            continue
        if ell == 0:
            # Only reachable with no "rest", i.e. a single width, which validation excludes.
            break
        m_ceil = ceil(Fraction(s, ell))
        a = s - (m_ceil - 1) * ell
        cross = sum(sigma[i] * sigma[j] for i in range(k) for j in range(i + 1, k))
        value = (
            Fraction(-(rank**2) + rank * (hs[0] + hs[-1]), 2)
            + Fraction(a * (ell - a), 4 * ell)
            - Fraction(ell * (ell - 1), 4) * Fraction(s, ell) ** 2
            + Fraction(cross, 2)
        )
        return _DlnTerms(value=value, multiplicity=a * (ell - a) + 1)
    raise ValueError(f"no subset of Deltas satisfies Aoyagi's conditions for widths={hs}, rank={rank}")


def dln_learning_coefficient(widths: Sequence[int], rank: int) -> float:
    """Deep linear network with widths H_0 (input) .. H_L (output) and true rank r (Aoyagi 2024)."""
    return float(_dln_exact(widths, rank).value)


def dln_multiplicity(widths: Sequence[int], rank: int) -> int:
    """Multiplicity m = a(ell - a) + 1 of the deep linear network's learning coefficient (Aoyagi 2024)."""
    return _dln_exact(widths, rank).multiplicity


def true_learning_coefficient(problem: str, widths: Sequence[int], rank: int | None) -> float | None:
    """Known lambda for "linear" [M, N], "rrr" [M, H, N] or "dln" [H_0..H_L]; None for other problems.

    Widths are input-first. A problem with a known value but the wrong number of widths or a missing
    rank raises ValueError rather than returning None, since that is a configuration mistake.
    """
    ws = list(widths)
    if problem == "linear":
        if len(ws) != 2:
            raise ValueError(f"widths for 'linear' must be [in_dim, out_dim], got {ws}")
        return linear_learning_coefficient(ws[0], ws[1])
    if problem == "rrr":
        if len(ws) != 3:
            raise ValueError(f"widths for 'rrr' must be [in_dim, hidden, out_dim], got {ws}")
        if rank is None:
            raise ValueError("rank is required for 'rrr' (0 <= rank <= min(widths))")
        return rrr_learning_coefficient(ws[0], ws[1], ws[2], rank)
    if problem == "dln":
        if rank is None:
            raise ValueError("rank is required for 'dln' (0 <= rank <= min(widths))")
        return dln_learning_coefficient(ws, rank)
    return None
