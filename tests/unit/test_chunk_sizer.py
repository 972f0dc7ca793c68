"""ChunkSizer (chunk_sizer.py): chunks sized so that a step carrying one takes ``slowdown``
plain decode steps, from measured pass times (here: a cost model standing in for the clock;
the engine's own use is covered by the chunked-prefill and load benchmarks' real passes)."""

from __future__ import annotations

import itertools
import math

import pytest

from workers.engine.chunk_sizer import START, ChunkSizer


def settle(sizer: ChunkSizer, base_s: float, fixed_s: float, per_token_s: float, steps: int = 40) -> int:
    """Alternate plain steps and steps carrying the sizer's chunk under a linear cost model."""
    for _ in range(steps):
        sizer.observe(0, base_s)
        sizer.observe(sizer.chunk, base_s + fixed_s + per_token_s * sizer.chunk)
    return sizer.chunk


def test_starts_from_the_starting_chunk_until_both_kinds_of_pass_are_seen() -> None:
    sizer = ChunkSizer(cap=2048)
    assert sizer.chunk == START
    sizer.observe(20, 1.0)  # a chunk before any plain step: nothing to compare it with
    assert sizer.chunk == START


@pytest.mark.parametrize(
    ("base_s", "fixed_s", "per_token_s"),
    [(0.057, 0.007, 0.0017), (0.087, 0.007, 0.0017), (0.060, 0.0, 0.0025)],
)
def test_settles_where_a_chunk_step_costs_the_target_slowdown(
    base_s: float, fixed_s: float, per_token_s: float
) -> None:
    sizer = ChunkSizer(cap=2048, slowdown=1.7)
    chunk = settle(sizer, base_s, fixed_s, per_token_s)
    ratio = (base_s + fixed_s + per_token_s * chunk) / base_s
    assert 1.6 <= ratio <= 1.7 + per_token_s / base_s, (chunk, ratio)


def test_cheap_tokens_give_large_chunks_capped_and_growing_at_most_2x_a_step() -> None:
    sizer = ChunkSizer(cap=512)  # a GPU-like pass: 10 ms plain, 10 us a prompt token
    sizer.observe(0, 0.010)
    seen = [sizer.chunk]
    for _ in range(10):
        sizer.observe(sizer.chunk, 0.010 + 0.00001 * sizer.chunk)
        seen.append(sizer.chunk)
    assert seen[-1] == 512
    assert all(b <= 2 * a for a, b in itertools.pairwise(seen)), seen


def test_a_slower_machine_gets_smaller_chunks_but_never_below_the_floor() -> None:
    fast = settle(ChunkSizer(cap=2048), 0.05, 0.0, 0.001)
    slow = settle(ChunkSizer(cap=2048), 0.05, 0.0, 0.004)
    assert slow < fast
    hopeless = settle(ChunkSizer(cap=2048, floor=4), 0.05, 0.5, 0.1)
    assert hopeless == 4


@pytest.mark.parametrize("slowdown", [1.0, 0.5, math.inf, math.nan])
def test_a_slowdown_not_finite_and_over_one_is_refused(slowdown: float) -> None:
    with pytest.raises(ValueError, match=rf"slowdown must be a finite number > 1, got {slowdown}"):
        ChunkSizer(cap=64, slowdown=slowdown)
