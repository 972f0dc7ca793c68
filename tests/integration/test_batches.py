"""Batches against a real server and a real worker: order, progress, cancel, resume."""

from __future__ import annotations

import time

import pytest

from consumer.batch import BatchProgress
from schemas import keys
from schemas.errors import ValidationError
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def wait_complete(stack: Stack, batch_id: str, timeout_s: float = 120.0) -> BatchProgress:
    deadline = time.monotonic() + timeout_s
    while not (progress := stack.reader.batch(batch_id)).complete:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)
    return progress


def test_results_in_input_order_with_custom_ids(tiny_stack: Stack) -> None:
    items: list[object] = [{"prompt": f"item {i}", "custom_id": f"c{i}", "seed": i} for i in range(12)]
    items.append("a plain prompt")
    items.append({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})
    bid = tiny_stack.producer.submit_batch(items, max_tokens=6, temperature=0.8)
    results = list(tiny_stack.reader.batch_results(bid, timeout_s=60))
    assert [r.index for r in results] == list(range(14))
    assert [r.custom_id for r in results] == [*(f"c{i}" for i in range(12)), None, None]
    assert all(r.status == "finished" and r.result is not None for r in results)
    assert results[-1].result is not None and results[-1].result.usage is not None
    assert results[-1].result.usage.completion_tokens <= 3
    # Each item is an ordinary request: the same result reads alone.
    assert tiny_stack.reader.result(results[3].request_id or "").texts == results[3].result.texts  # type: ignore[union-attr]


def test_progress_counts_and_tokens(tiny_stack: Stack) -> None:
    bid = tiny_stack.producer.submit_batch([f"p{i}" for i in range(20)], max_tokens=5, ignore_eos=True)
    progress = wait_complete(tiny_stack, bid)
    assert (progress.total, progress.submitted, progress.done, progress.failed, progress.cancelled) == (
        20,
        20,
        20,
        0,
        0,
    )
    assert progress.tokens == 100
    assert progress.status == "submitted"


def test_cancel_batch_ends_every_item(tiny_stack: Stack) -> None:
    bid = tiny_stack.producer.submit_batch([f"long {i}" for i in range(40)], max_tokens=400, ignore_eos=True)
    assert tiny_stack.producer.cancel_batch(bid) == 40
    progress = wait_complete(tiny_stack, bid)
    assert progress.cancelled >= 30, progress  # a few may finish before the cancel lands
    assert progress.done + progress.cancelled == 40
    assert progress.status == "cancelled"
    assert {r.status for r in tiny_stack.reader.batch_results(bid, timeout_s=30)} <= {"cancelled", "finished"}


def test_resume_resubmits_only_unfinished(tiny_stack: Stack) -> None:
    items = [{"prompt": f"r{i}", "custom_id": f"r{i}"} for i in range(6)]
    bid = tiny_stack.producer.submit_batch(items, max_tokens=4)
    first = {r.index: r.request_id for r in tiny_stack.reader.batch_results(bid, timeout_s=60)}
    # Pretend two items were cancelled and one never went out.
    client = tiny_stack.producer._redis
    for i in (1, 4):
        client.hset(keys.meta_key(first[i] or ""), "status", "cancelled")
    client.hdel(keys.batch_items_key(bid), "5")
    redone = tiny_stack.producer.resume_batch(bid, items, max_tokens=4)
    assert redone == [1, 4, 5]
    after = list(tiny_stack.reader.batch_results(bid, timeout_s=60))
    assert [r.status for r in after] == ["finished"] * 6
    assert [r.request_id == first[r.index] for r in after] == [True, False, True, True, False, False]
    with pytest.raises(ValidationError, match="custom_id"):
        tiny_stack.producer.resume_batch(bid, [{**item, "custom_id": "x" + str(i)} for i, item in enumerate(items)])


def test_bad_item_enqueues_nothing(tiny_stack: Stack) -> None:
    with pytest.raises(ValidationError) as info:
        tiny_stack.producer.submit_batch(["ok", {"prompt": "x", "temperature": -1}])
    assert info.value.field == "items[1].temperature"
    with pytest.raises(ValidationError, match=r"items\[1\]\.custom_id"):
        tiny_stack.producer.submit_batch([{"prompt": "a", "custom_id": "same"}, {"prompt": "b", "custom_id": "same"}])
    with pytest.raises(ValidationError, match="batch_id"):
        tiny_stack.reader.batch("batch_unknown")
