"""The request index against a real server (and a real worker): builders, readers, bounds."""

from __future__ import annotations

import time

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
    rid = keys.new_request_id()  # no worker runs it: only these commands write its index
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


def test_worker_reports_running_progress_and_end(smol_stack: Stack) -> None:
    """The real worker writes the index in its own round trips: running (with its worker id
    and attempt), progress with tokens and TTFT about once a second, the end with usage."""
    # SmolLM2 (15-50 tokens/s on the machines this runs on): several seconds, so progress
    # events (about one a second) come at any of those speeds; the tiny model outruns them.
    tokens = 160
    rid = smol_stack.producer.submit("index me", max_tokens=tokens, ignore_eos=True, temperature=0)
    result = smol_stack.reader.result(rid, timeout_s=120)
    client = smol_stack.producer._redis
    deadline = time.monotonic() + 5  # the end goes out with the worker's next round trip
    while client.zscore(keys.INDEX_RECENT_KEY, rid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    events = recent_events(smol_stack, rid)
    statuses = [e["s"] for e in events]
    assert statuses[0] == "queued" and statuses[1] == "running" and statuses[-1] == "finished", statuses
    running = events[1]
    assert running["worker"] and running["attempt"] == 1
    ended = events[-1]
    assert ended["tokens"] == result.usage.completion_tokens == tokens
    assert ended["finish_reason"] == "length" and ended["usage"]["completion_tokens"] == tokens  # type: ignore[index]
    progress = [e for e in events if e["s"] == "progress"]
    assert progress, statuses
    for p in progress:
        assert 0 < p["tokens"] <= tokens and p["ttft_s"] >= 0 and p["tps"] > 0  # type: ignore[operator]
    assert client.zscore(keys.INDEX_RUNNING_KEY, rid) is None
    state: dict[str, object] = {}
    for ev in events:
        state = index.fold(state, ev)
    assert state["s"] == "finished" and state["worker"] == running["worker"]


def test_worker_reports_cancel(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("cancel me", max_tokens=100_000, ignore_eos=True)
    stream = tiny_stack.reader.stream(rid, after="0", timeout_s=60, cancel_on_exit=False)
    next(iter(stream))
    tiny_stack.producer.cancel(rid)
    for _ in stream:
        pass
    client = tiny_stack.producer._redis
    deadline = time.monotonic() + 5
    while client.zscore(keys.INDEX_RECENT_KEY, rid) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [e["s"] for e in recent_events(tiny_stack, rid)][-1] == "cancelled"
