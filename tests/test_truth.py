"""Closed-form learning coefficients: reference examples, cross-formula agreement, argument checks."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable

import pytest

from llc.problems.truth import (
    dln_learning_coefficient,
    dln_multiplicity,
    linear_learning_coefficient,
    rrr_learning_coefficient,
    true_learning_coefficient,
)

SIZES = range(1, 9)


def test_reference_examples() -> None:
    assert rrr_learning_coefficient(5, 3, 5, 0) == 6.5
    assert dln_learning_coefficient([10, 20, 20, 10], 3) == 50.0


@pytest.mark.parametrize("in_dim", SIZES)
def test_dln_agrees_with_rrr_for_one_hidden_layer(in_dim: int) -> None:
    # Both formulas are computed exactly and rounded once, so agreement must be bit-for-bit.
    mismatches = []
    for hidden, out_dim in itertools.product(SIZES, SIZES):
        for rank in range(min(in_dim, hidden, out_dim) + 1):
            rrr = rrr_learning_coefficient(in_dim, hidden, out_dim, rank)
            dln = dln_learning_coefficient([in_dim, hidden, out_dim], rank)
            if rrr != dln:
                mismatches.append(f"M={in_dim} H={hidden} N={out_dim} r={rank}: rrr={rrr} dln={dln}")
    assert not mismatches, "DLN and RRR formulas disagree:\n" + "\n".join(mismatches)


@pytest.mark.parametrize("in_dim", SIZES)
def test_dln_multiplicity_for_one_hidden_layer(in_dim: int) -> None:
    # Aoyagi & Watanabe (2005): multiplicity 2 exactly in the balanced case with M+N+H+r odd, else 1.
    mismatches = []
    for hidden, out_dim in itertools.product(SIZES, SIZES):
        for rank in range(min(in_dim, hidden, out_dim) + 1):
            balanced = (
                out_dim + rank <= in_dim + hidden
                and in_dim + rank <= out_dim + hidden
                and hidden + rank <= in_dim + out_dim
            )
            expected = 2 if balanced and (in_dim + hidden + out_dim + rank) % 2 == 1 else 1
            got = dln_multiplicity([in_dim, hidden, out_dim], rank)
            if got != expected:
                mismatches.append(f"M={in_dim} H={hidden} N={out_dim} r={rank}: m={got}, expected {expected}")
    assert not mismatches, "\n".join(mismatches)


def test_rrr_odd_parity_adds_one_eighth() -> None:
    # M=5, H=3, N=5: r=0 has odd M+N+H+r, (2*3*10 - 0 - 9 + 1)/8 = 52/8; r=1 is even, (2*4*10 - 16)/8.
    assert rrr_learning_coefficient(5, 3, 5, 0) == 52 / 8
    assert rrr_learning_coefficient(5, 3, 5, 1) == 64 / 8
    assert rrr_learning_coefficient(4, 3, 4, 0) == (2 * 3 * 8 - 0 - 9 + 1) / 8


def test_rrr_each_case() -> None:
    # One point in each of the four regions, checked by hand against the reference formulas.
    assert rrr_learning_coefficient(1, 1, 8, 1) == (1 * 1 - 1 * 1 + 8 * 1) / 2  # M+H < N+r
    assert rrr_learning_coefficient(8, 1, 1, 1) == (1 * 1 - 1 * 1 + 8 * 1) / 2  # N+H < M+r
    assert rrr_learning_coefficient(2, 8, 3, 2) == 2 * 3 / 2  # M+N < H+r
    assert rrr_learning_coefficient(4, 4, 4, 2) == (2 * 6 * 8 - 0 - 36) / 8  # balanced, even


@pytest.mark.parametrize(("in_dim", "out_dim"), itertools.product(SIZES, SIZES))
def test_linear_is_half_the_parameter_count(in_dim: int, out_dim: int) -> None:
    assert linear_learning_coefficient(in_dim, out_dim) == in_dim * out_dim / 2
    assert true_learning_coefficient("linear", [in_dim, out_dim], None) == in_dim * out_dim / 2


@pytest.mark.parametrize(("in_dim", "out_dim"), itertools.product(SIZES, SIZES))
def test_full_rank_rrr_equals_linear(in_dim: int, out_dim: int) -> None:
    # With r = min(M, N) and H >= r the product BA is a generic M x N matrix; every branch of the
    # RRR formula then reduces to M*N/2 (e.g. balanced H = N >= M: ((M+N)^2 - (M-N)^2)/8 = MN/2).
    rank = min(in_dim, out_dim)
    linear = linear_learning_coefficient(in_dim, out_dim)
    for hidden in range(rank, 12):
        assert rrr_learning_coefficient(in_dim, hidden, out_dim, rank) == linear, f"H={hidden}"


@pytest.mark.parametrize(("in_dim", "out_dim"), itertools.product(SIZES, SIZES))
def test_dln_without_hidden_layer_is_linear(in_dim: int, out_dim: int) -> None:
    # A single linear map is regular whatever the true rank; the DLN formula must say M*N/2.
    for rank in range(min(in_dim, out_dim) + 1):
        assert dln_learning_coefficient([in_dim, out_dim], rank) == in_dim * out_dim / 2, f"r={rank}"
        assert dln_multiplicity([in_dim, out_dim], rank) == 1


def test_dln_is_symmetric_under_transpose() -> None:
    # W_L...W_1 and its transpose W_1^T...W_L^T have the same learning coefficient.
    for widths in ([3, 7, 2, 5], [10, 20, 20, 10], [4, 1, 6], [2, 9, 9, 3, 8]):
        for rank in range(min(widths) + 1):
            assert dln_learning_coefficient(widths, rank) == dln_learning_coefficient(widths[::-1], rank)


def test_dln_deep_tied_deltas() -> None:
    # Worked by hand from the reference formula. Deltas (r=0) are 2, 2, 2, 2: every proper prefix
    # splits a tie, so Sigma is all four, ell=3, S=8, M=3, a=2:
    # lambda = 0 + 2/12 - (6/4)(8/3)^2 + (1/2)*6*4 = 1/6 - 32/3 + 12 = 3/2, multiplicity 2*1 + 1 = 3.
    assert dln_learning_coefficient([2, 2, 2, 2], 0) == pytest.approx(1.5, abs=1e-12)
    assert dln_multiplicity([2, 2, 2, 2], 0) == 3


def test_dispatch() -> None:
    assert true_learning_coefficient("rrr", [5, 3, 5], 0) == 6.5
    assert true_learning_coefficient("dln", [10, 20, 20, 10], 3) == 50.0
    assert true_learning_coefficient("linear", [3, 4], 2) == 6.0
    assert true_learning_coefficient("mlp", [16, 64, 64, 1], None) is None


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: linear_learning_coefficient(0, 3), "in_dim"),
        (lambda: linear_learning_coefficient(3, -1), "out_dim"),
        (lambda: rrr_learning_coefficient(0, 3, 5, 0), "in_dim"),
        (lambda: rrr_learning_coefficient(5, 0, 5, 0), "hidden"),
        (lambda: rrr_learning_coefficient(5, 3, 0, 0), "out_dim"),
        (lambda: rrr_learning_coefficient(5, 3, 5, 4), "rank"),
        (lambda: rrr_learning_coefficient(5, 3, 5, -1), "rank"),
        (lambda: rrr_learning_coefficient(5, 3, 5, 1.0), "rank"),
        (lambda: dln_learning_coefficient([5], 0), "widths"),
        (lambda: dln_learning_coefficient([5, 0, 5], 0), "widths[1]"),
        (lambda: dln_learning_coefficient([5, 2, 5], 3), "rank"),
        (lambda: dln_multiplicity([5, 2, 5], -1), "rank"),
        (lambda: true_learning_coefficient("rrr", [5, 5], 0), "widths"),
        (lambda: true_learning_coefficient("rrr", [5, 3, 5], None), "rank"),
        (lambda: true_learning_coefficient("dln", [5, 3, 5], None), "rank"),
        (lambda: true_learning_coefficient("linear", [5, 3, 5], None), "widths"),
    ],
)
def test_bad_arguments_raise_naming_the_argument(call: Callable[[], object], argument: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(argument) + " "):
        call()
