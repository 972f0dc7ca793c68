"""`finite_rows`: which rows of a step's logits the core may sample (a row with NaN or an
infinity fails its request alone)."""

from __future__ import annotations

import pytest
import torch

from workers.engine.core import finite_rows


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("column", [0, 7, 49151])
def test_one_bad_value_marks_only_its_row(bad: float, column: int) -> None:
    logits = torch.randn(4, 49152) * 30
    logits[2, column] = bad
    assert finite_rows(logits) == [True, True, False, True]


def test_huge_finite_logits_are_finite() -> None:
    """Extremes, not sums: rows of values near float32's max do not overflow into a failure."""
    logits = torch.full((2, 1000), 3.0e38)
    logits[1] = -3.0e38
    assert finite_rows(logits) == [True, True]


def test_every_row_and_bfloat16() -> None:
    logits = torch.randn(3, 64, dtype=torch.bfloat16)
    logits[0, 5] = float("nan")
    logits[2, 9] = float("inf")
    assert finite_rows(logits) == [False, True, False]
    assert finite_rows(torch.randn(16, 64)) == [True] * 16
