"""IndexBook: what a worker tells the request index, decided from scripted steps and replies."""

from __future__ import annotations

import json

from schemas import keys
from schemas.records import Record, Usage
from workers.index_book import IndexBook
from workers.lifecycle import PublishCall, StepOutcome, WriteBook

RID = "r-index"
USAGE = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)


def setup(tokens: int = 0, attempt: int = 1) -> tuple[WriteBook, IndexBook]:
    writes, idx = WriteBook(5.0), IndexBook("w1", progress_every_s=1.0)
    writes.hold(RID, f"w1/{attempt}", "0-0", 3600, tokens)
    idx.track(RID, model="m", batch_id="b1", attempt=attempt, submitted_at=100.0, tokens=tokens)
    return writes, idx


def step(writes: WriteBook, records: list[Record]) -> PublishCall:
    (call,) = writes.plan([(RID, r) for r in records], [RID])
    return call


def events(commands: list[tuple[str, ...]]) -> list[dict[str, object]]:
    return [json.loads(c[-1]) for c in commands if c[0] == "XADD" and c[1] == keys.INDEX_EVENTS_KEY]


def test_running_once_then_progress_throttled() -> None:
    writes, idx = setup()
    first = idx.on_step([step(writes, [])], now=100.5)  # admitted, no token yet
    assert [e["s"] for e in events(first)] == ["running"]
    assert events(first)[0]["worker"] == "w1" and events(first)[0]["batch"] == "b1"
    assert idx.on_step([step(writes, [Record(seq=0, token_ids=[5])])], now=101.0) == []  # < 1 s since running
    ev = events(idx.on_step([step(writes, [Record(seq=1, token_ids=[6, 7])])], now=102.0))
    assert ev == [{"id": RID, "s": "progress", "t": 102.0, "tokens": 3, "ttft_s": 1.0, "tps": 2.0, "batch": "b1"}]
    assert idx.on_step([step(writes, [Record(seq=2, token_ids=[8])])], now=102.5) == []  # throttled


def test_no_progress_before_the_first_token() -> None:
    writes, idx = setup()
    idx.on_step([step(writes, [])], now=100.0)
    assert idx.on_step([step(writes, [])], now=105.0) == []


def test_resumed_request_has_no_ttft_and_counts_its_own_rate() -> None:
    writes, idx = setup(tokens=10, attempt=2)
    ev = events(idx.on_step([step(writes, [])], now=100.0))
    assert ev[0]["attempt"] == 2
    idx.on_step([step(writes, [Record(seq=10, token_ids=[1])])], now=100.5)
    (progress,) = events(idx.on_step([step(writes, [Record(seq=11, token_ids=[2])])], now=101.5))
    assert progress["tokens"] == 12 and "ttft_s" not in progress and progress["tps"] == 1.0


def test_end_is_announced_only_after_the_publish_landed() -> None:
    writes, idx = setup()
    idx.on_step([step(writes, [])], now=100.0)
    last = Record(seq=0, token_ids=[1, 2], finish_reason="length", usage=USAGE)
    call = step(writes, [last])
    assert events(idx.on_step([call], now=101.0)) == []  # in-band: nothing about the end yet
    assert idx.take_pending() == []
    idx.on_outcome([call], StepOutcome(finished={RID}), now=101.0)
    pending = idx.take_pending()
    (ended,) = events(pending)
    assert ended["s"] == "finished" and ended["finish_reason"] == "length" and ended["tokens"] == 2
    usage = {"prompt_tokens": 3, "completion_tokens": 4, "queue_s": 0.0, "e2e_s": 0.0, "ttft_s": None}
    assert ended["usage"] == {**usage, "decode_tokens_per_s": None}
    assert ("ZREM", keys.INDEX_RUNNING_KEY, RID) in pending
    assert idx.tracked == {} and idx.take_pending() == []


def test_lost_lease_announces_nothing() -> None:
    writes, idx = setup()
    idx.on_step([step(writes, [])], now=100.0)
    call = step(writes, [Record(seq=0, token_ids=[1], finish_reason="stop", usage=USAGE)])
    idx.on_outcome([call], StepOutcome(lost={RID}), now=101.0)
    assert idx.take_pending() == [] and idx.tracked == {}


def test_refused_write_is_announced_failed() -> None:
    writes, idx = setup()
    call = step(writes, [Record(seq=0, token_ids=[1])])
    idx.on_outcome([call], StepOutcome(broken={RID: "WRONGTYPE"}), now=101.0)
    (ended,) = events(idx.take_pending())
    assert ended["s"] == "failed" and ended["finish_reason"] == "error"


def test_cancelled_status_comes_from_the_records() -> None:
    writes, idx = setup()
    call = step(writes, [Record(seq=0, finish_reason="cancelled", usage=USAGE)])
    idx.on_outcome([call], StepOutcome(finished={RID}), now=101.0)
    assert events(idx.take_pending())[0]["s"] == "cancelled"


def test_untracked_requests_are_ignored() -> None:
    writes, idx = WriteBook(5.0), IndexBook("w1")
    writes.hold(RID, "w1/1", "0-0", 3600)
    call = step(writes, [Record(seq=0, finish_reason="stop", usage=USAGE)])
    assert idx.on_step([call], now=1.0) == []
    idx.on_outcome([call], StepOutcome(finished={RID}), now=1.0)
    assert idx.take_pending() == []
