"""The request index against a real server (and a real worker): builders, readers, bounds."""

from __future__ import annotations

import pytest

from consumer.index import parse_entries
from schemas import index, keys
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def send(stack: Stack, commands: list[tuple[str, ...]], times: int = 1) -> None:
    pipe = stack.producer._redis.pipeline(transaction=False)
    for command in commands * times:
        pipe.execute_command(*command)
    pipe.execute()


def test_lifecycle_is_idempotent_and_folds(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("hello", max_tokens=2)
    tiny_stack.reader.result(rid, timeout_s=60)
    # What the worker's round trips send (a resend repeats them; takeover sends running again).
    send(tiny_stack, index.on_running(rid, "w1", "m", "b1", 1), times=2)
    send(tiny_stack, index.on_progress(rid, 5, ttft_s=0.1, tokens_per_s=50.0))
    send(tiny_stack, index.on_finished(rid, "finished", {"ttft_s": 0.1, "completion_tokens": 2}, "b1", "length", 2), 2)
    send(tiny_stack, index.on_progress(rid, 6))  # late, from a worker that lost its lease
    client = tiny_stack.producer._redis
    assert client.zscore(keys.INDEX_RUNNING_KEY, rid) is None
    assert client.zscore(keys.INDEX_QUEUED_KEY, rid) is None
    assert client.zscore(keys.INDEX_RECENT_KEY, rid) is not None
    state: dict[str, object] = {}
    for ev in recent_events(tiny_stack, rid):
        state = index.fold(state, ev)
    assert state["s"] == "finished" and state["tokens"] == 2 and state["worker"] == "w1"
    assert rid not in {a.request_id for a in tiny_stack.reader.active()}


def recent_events(stack: Stack, rid: str) -> list[dict[str, object]]:
    entries = stack.producer._redis.xrange(keys.INDEX_EVENTS_KEY)
    return [e.data for e in parse_entries(entries) if e.request_id == rid]


def test_active_shows_queued_then_drops_ended(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("a queued one", max_tokens=2)
    first = recent_events(tiny_stack, rid)
    assert first[0]["s"] == "queued" and first[0]["prompt"] == "a queued one"
    tiny_stack.reader.result(rid, timeout_s=60)
    # Ended: its meta says so, so active() leaves it out even before any worker hook runs.
    assert rid not in {a.request_id for a in tiny_stack.reader.active(limit=1000)}


def test_live_feed_sees_new_events(tiny_stack: Stack) -> None:
    feed = tiny_stack.reader.events()  # from now on
    rid = tiny_stack.producer.submit("live", max_tokens=2)
    assert next(e for e in feed if e.request_id == rid).status == "queued"


def test_bounded(tiny_stack: Stack) -> None:
    client = tiny_stack.producer._redis
    for chunk in range(6):
        commands = []
        for i in range(5000):
            rid = f"bound-{chunk}-{i}"
            commands += index.on_running(rid, "w", None, None, 1) + index.on_finished(
                rid, "finished", None, None, "stop", 1
            )
        send(tiny_stack, commands)
    assert client.xlen(keys.INDEX_EVENTS_KEY) < index.EVENTS_MAXLEN * 1.2
    assert client.zcard(keys.INDEX_RECENT_KEY) == index.RECENT_MAX
    assert client.zcard(keys.INDEX_RUNNING_KEY) == 0
