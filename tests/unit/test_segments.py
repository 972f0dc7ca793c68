"""Decode attention in row segments (segments.py): the plan, and the real model's decode pass
with segments giving the logits of one call over every column."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from workers.engine import packed
from workers.engine.model_runner import ModelRunner, load_model
from workers.engine.segments import Segment, plan


def cost(segments: list[Segment], end: int) -> int:
    return sum((s.rows.stop - s.rows.start) * (end - s.start) for s in segments)


def test_rows_of_one_length_stay_one_unmasked_segment() -> None:
    assert plan([3, 3, 3, 3]) == [Segment(slice(0, 4), 3, False)]


def test_two_groups_split_where_they_meet() -> None:
    starts = [0] * 10 + [200] * 10
    assert plan(starts) == [Segment(slice(0, 10), 0, False), Segment(slice(10, 20), 200, False)]


def test_a_split_that_saves_less_than_a_call_costs_is_not_made() -> None:
    starts = [0] * 4 + [10] * 4  # saves 4 rows x 10 columns
    assert len(plan(starts, min_gain=41)) == 1
    assert len(plan(starts, min_gain=40)) == 2


def test_segments_cover_every_row_in_order_and_start_at_their_first_row() -> None:
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        starts = torch.randint(0, 300, (int(torch.randint(1, 64, (1,), generator=gen)),), generator=gen).tolist()
        segments = plan(starts, max_segments=4, min_gain=1)
        assert len(segments) <= 4
        assert segments[0].rows.start == 0 and segments[-1].rows.stop == len(starts)
        for a, b in itertools.pairwise(segments):
            assert a.rows.stop == b.rows.start
        for s in segments:
            part = starts[s.rows]
            assert s.start == min(part) and s.padded == (max(part) > min(part))
        assert cost(segments, 300) <= cost(plan(starts, max_segments=1), 300)


def test_more_segments_never_read_more() -> None:
    starts = [0, 50, 5, 120, 130, 125, 10, 200, 210, 40, 220, 230]
    costs = [cost(plan(starts, max_segments=m, min_gain=1), 300) for m in (1, 2, 3, 4)]
    assert costs == sorted(costs, reverse=True) and costs[-1] < costs[0]


@pytest.fixture(scope="module")
def runner(smollm2_dir: Path) -> ModelRunner:
    return ModelRunner(load_model("smol", str(smollm2_dir)))


def test_segmented_decode_gives_the_logits_of_one_call(runner: ModelRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long rows first, then short ones (a real batch's order after arrivals): the plan splits,
    and three decode steps give the same logits and greedy tokens as with one call a layer."""
    lengths = [180, 170, 175, 20, 25, 18, 30, 22]
    prompts = [[(7 * i + j) % 5000 + 10 for j in range(n)] for i, n in enumerate(lengths)]
    _, split_cache = runner.prefill(prompts)
    _, whole_cache = runner.prefill(prompts)
    assert len(plan(split_cache.mask.argmax(dim=1).tolist())) > 1
    tokens = [11] * len(lengths)
    for _ in range(3):
        with monkeypatch.context() as m:
            m.setattr(packed, "plan", lambda starts: plan(starts, max_segments=1))
            whole, _ = runner.run(whole_cache, tokens, None, 0)
        split, _ = runner.run(split_cache, tokens, None, 0)
        assert whole is not None and split is not None
        torch.testing.assert_close(split, whole, rtol=1e-4, atol=1e-4)
        assert split.argmax(-1).tolist() == whole.argmax(-1).tolist()
        tokens = whole.argmax(-1).tolist()
