"""The sans-IO reader core, fed scripted replies: no Redis, no clock but the values given."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from consumer.core import MAX_BLOCK_MS, READ_COUNT, Done, Probe, Read, ReaderCore, entries_of
from schemas import keys
from schemas.errors import GenerationFailed, RequestNotFound, SchemaError, StreamTimeout, ValidationError
from schemas.records import ErrorInfo, Record, TokenLogprob, Usage, encode

RID = "req-core-1"
USAGE = Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5)

Entry = tuple[bytes, dict[bytes, bytes]]


def entry(record: Record) -> Entry:
    return keys.entry_id_for(record.seq).encode(), {b"r": encode(record)}


def raw_entry(seq: int, data: bytes) -> Entry:
    return keys.entry_id_for(seq).encode(), {b"r": data}


def simple_stream(n: int = 3) -> list[Record]:
    """``n`` records of choice 0; the last one ends the stream."""
    out = [Record(seq=i, text=f"t{i} ", token_ids=[i]) for i in range(n - 1)]
    out.append(Record(seq=n - 1, text="end", token_ids=[99], finish_reason="stop", usage=USAGE))
    return out


# Any stream's last entry that is not the final record: the probe sees a running stream.
MID = [(b"1-0", {b"r": encode(Record(seq=0, text="x", token_ids=[1]))})]


def started(core: ReaderCore, now: float = 0.0, *, deltas: bool = True, meta: bool = True) -> Read:
    """Run the initial probe; return the first read."""
    assert core.next_action(now) == Probe()
    core.on_probe(MID if deltas else [], meta)
    action = core.next_action(now)
    assert isinstance(action, Read)
    return action


def test_normal_run_reads_until_the_record_with_usage() -> None:
    core = ReaderCore(RID)
    first = started(core)
    assert first == Read(block_ms=MAX_BLOCK_MS, count=READ_COUNT, after="0")
    records = simple_stream(3)
    got = core.on_entries([entry(r) for r in records[:2]], now=0.1)
    assert [r.seq for r in got] == [0, 1]
    assert [r.entry_id for r in got] == ["1-0", "2-0"]
    assert core.next_action(0.1) == Read(block_ms=MAX_BLOCK_MS, count=READ_COUNT, after="2-0")
    assert [r.seq for r in core.on_entries([entry(records[2])], now=0.2)] == [2]
    assert core.ended
    assert core.next_action(0.2) == Done()
    assert not core.should_cancel_on_exit
    result = core.result()
    assert result.texts == ["t0 t1 end"]
    assert result.finish_reasons == ["stop"]
    assert result.usage == USAGE
    assert result.records == 3
    assert result.last_entry_id == "3-0"
    assert result.error is None


def test_empty_read_probes_again_then_times_out_at_the_deadline() -> None:
    core = ReaderCore(RID, timeout_s=2.0)
    started(core, now=10.0)
    assert core.on_entries([], now=11.0) == []
    assert core.next_action(11.0) == Probe()
    core.on_probe([], True)  # queued: meta only
    # Block no longer than the time left, and never 0 (BLOCK 0 is "forever").
    assert core.next_action(11.5) == Read(block_ms=500, count=READ_COUNT, after="0")
    assert core.next_action(11.9999999) == Read(block_ms=1, count=READ_COUNT, after="0")
    core.on_entries([], now=12.0)
    assert core.next_action(12.0) == Probe()
    core.on_probe([], True)
    with pytest.raises(StreamTimeout) as info:
        core.next_action(12.0)
    assert info.value.request_id == RID
    assert core.should_cancel_on_exit


def test_a_new_record_pushes_the_deadline_back() -> None:
    core = ReaderCore(RID, timeout_s=2.0)
    started(core, now=0.0)
    core.on_entries([entry(Record(seq=0, text="a"))], now=1.9)
    core.on_entries([], now=3.0)
    assert core.next_action(3.0) == Probe()
    core.on_probe(MID, True)
    assert core.next_action(3.0) == Read(block_ms=900, count=READ_COUNT, after="1-0")


def test_timeout_zero_still_reads_once() -> None:
    core = ReaderCore(RID, timeout_s=0)
    assert started(core).block_ms == 1
    core.on_entries([], now=0.0)
    core.next_action(0.0)
    core.on_probe(MID, True)
    with pytest.raises(StreamTimeout):
        core.next_action(0.0)


def test_no_timeout_waits_forever() -> None:
    core = ReaderCore(RID, timeout_s=None)
    started(core)
    for now in (1e3, 1e6, 1e9):
        core.on_entries([], now=now)
        assert core.next_action(now) == Probe()
        core.on_probe(MID, False)
        assert core.next_action(now) == Read(block_ms=MAX_BLOCK_MS, count=READ_COUNT, after="0")


def test_unknown_request_is_not_found() -> None:
    core = ReaderCore(RID)
    assert core.next_action(0.0) == Probe()
    core.on_probe([], False)
    with pytest.raises(RequestNotFound) as info:
        core.next_action(0.0)
    assert isinstance(info.value, LookupError)
    assert not core.should_cancel_on_exit  # nothing to cancel


def test_request_that_expires_mid_stream_is_not_found() -> None:
    core = ReaderCore(RID)
    started(core)
    assert len(core.on_entries([entry(Record(seq=0, text="a"))], now=0.1)) == 1
    core.on_entries([], now=1.1)
    assert core.next_action(1.1) == Probe()
    core.on_probe([], False)
    with pytest.raises(RequestNotFound):
        core.next_action(1.1)


@pytest.mark.parametrize(("seqs", "word"), [([0, 2], "skipped"), ([0, 1, 1], "repeated"), ([1], "skipped")])
def test_seq_gap_or_repeat_is_a_schema_error_after_the_good_records(seqs: list[int], word: str) -> None:
    core = ReaderCore(RID)
    started(core)
    batch = [(keys.entry_id_for(i).encode(), {b"r": encode(Record(seq=s))}) for i, s in enumerate(seqs)]
    got = core.on_entries(batch, now=0.1)
    assert [r.seq for r in got] == seqs[:-1]
    with pytest.raises(SchemaError, match=word):
        core.next_action(0.1)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (encode(Record(seq=1, v=2)), "unknown record schema version 2"),
        (msgpack.packb({"v": 1, "seq": 1}), "malformed"),
    ],
)
def test_undecodable_record_is_a_schema_error_after_the_good_records(data: bytes, match: str) -> None:
    core = ReaderCore(RID)
    started(core)
    got = core.on_entries([entry(Record(seq=0, text="ok")), raw_entry(1, data)], now=0.1)
    assert [r.text for r in got] == ["ok"]
    with pytest.raises(SchemaError, match=match):
        core.next_action(0.1)


def test_entry_without_field_r_is_a_schema_error() -> None:
    core = ReaderCore(RID)
    started(core)
    assert core.on_entries([(b"1-0", {b"x": b"1"})], now=0.1) == []
    with pytest.raises(SchemaError, match="no bytes field 'r'"):
        core.next_action(0.1)


def test_record_after_the_last_one_is_a_schema_error() -> None:
    core = ReaderCore(RID)
    started(core)
    records = [*simple_stream(2), Record(seq=2, text="late")]
    assert len(core.on_entries([entry(r) for r in records], now=0.1)) == 2
    with pytest.raises(SchemaError, match="follows the last record"):
        core.next_action(0.1)


def test_absurd_choice_index_is_a_schema_error() -> None:
    core = ReaderCore(RID)
    started(core)
    core.on_entries([entry(Record(seq=0, index=10**9))], now=0.1)
    with pytest.raises(SchemaError, match="choice index"):
        core.next_action(0.1)


def test_failure_raises_generation_failed_after_every_record() -> None:
    core = ReaderCore(RID)
    started(core)
    boom = ErrorInfo(type="OutOfMemory", message="CUDA out of memory")
    records = [
        Record(seq=0, text="partial"),
        Record(seq=1, finish_reason="error", error=boom),
        Record(seq=2, finish_reason="error", error=boom, usage=USAGE),
    ]
    got = core.on_entries([entry(r) for r in records], now=0.1)
    assert got == records  # everything is handed out first
    with pytest.raises(GenerationFailed) as info:
        core.next_action(0.1)
    failed = info.value
    assert (failed.request_id, failed.error_type, failed.error_message) == (RID, "OutOfMemory", "CUDA out of memory")
    assert failed.result.texts == ["partial"]
    assert failed.result.error == boom
    assert failed.result.usage == USAGE
    assert not core.should_cancel_on_exit  # the stream did end


def test_error_finish_reason_without_details_still_fails() -> None:
    core = ReaderCore(RID)
    started(core)
    core.on_entries([entry(Record(seq=0, finish_reason="error", usage=USAGE))], now=0.1)
    with pytest.raises(GenerationFailed) as info:
        core.next_action(0.1)
    assert info.value.error_type == "unknown"


def test_resume_from_an_entry_id_checks_continuity_from_the_first_record_seen() -> None:
    core = ReaderCore(RID, after="3-0")
    assert started(core).after == "3-0"
    got = core.on_entries([entry(Record(seq=3, text="d")), entry(Record(seq=4, text="e"))], now=0.1)
    assert [r.entry_id for r in got] == ["4-0", "5-0"]
    assert core.next_action(0.1) == Read(block_ms=MAX_BLOCK_MS, count=READ_COUNT, after="5-0")
    core.on_entries([entry(Record(seq=6))], now=0.2)
    with pytest.raises(SchemaError, match="expected 5"):
        core.next_action(0.2)


def test_multi_choice_result_accumulates_per_choice() -> None:
    lp = TokenLogprob(token="a", bytes=[97], logprob=-0.5)
    records = [
        Record(seq=0, index=0, text="He", token_ids=[1], logprobs=[lp]),
        Record(seq=1, index=1, text="Yo", token_ids=[5]),
        Record(seq=2, index=0, text="llo", token_ids=[2, 3], logprobs=[lp, lp], finish_reason="stop"),
        Record(seq=3, index=1, text="!", token_ids=[6], finish_reason="length"),
        Record(seq=4, index=1, usage=USAGE),
    ]
    core = ReaderCore(RID)
    started(core)
    core.on_entries([entry(r) for r in records], now=0.1)
    assert core.next_action(0.1) == Done()
    result = core.result()
    assert result.texts == ["Hello", "Yo!"]
    assert result.text == "Hello"
    assert result.finish_reasons == ["stop", "length"]
    assert result.finish_reason == "stop"
    assert result.token_ids == [[1, 2, 3], [5, 6]]
    assert result.logprobs == [[lp, lp, lp], None]
    assert result.records == 5
    assert result.last_entry_id == "5-0"


@given(st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=12))
def test_any_batching_gives_the_same_records_and_result(batch_sizes: list[int]) -> None:
    records = simple_stream(12)
    entries = [entry(r) for r in records]
    core = ReaderCore(RID)
    started(core)
    got: list[Record] = []
    pos, now = 0, 0.0
    for size in [*batch_sizes, len(entries)]:
        if pos >= len(entries):
            break
        got += core.on_entries(entries[pos : pos + size], now)
        pos += size
        now += 0.01
        assert core.next_action(now) == (Done() if pos >= len(entries) else Read(MAX_BLOCK_MS, READ_COUNT, f"{pos}-0"))
    assert got == records
    assert core.result().texts == ["".join(r.text for r in records)]


def test_entries_of_accepts_every_reply_shape() -> None:
    e1, e2 = entry(Record(seq=0)), entry(Record(seq=1))
    key = b"tokenrelay:{x}:deltas"
    resp2: Any = [[key, [e1, e2]]]
    resp3: Any = {key: [[e1, e2]]}
    assert entries_of(resp2) == [e1, e2]
    assert entries_of(resp3) == [e1, e2]
    assert entries_of(None) == entries_of([]) == entries_of({}) == []


def test_on_reply_feeds_a_raw_reply() -> None:
    core = ReaderCore(RID)
    started(core)
    got = core.on_reply([[b"k", [entry(r) for r in simple_stream(2)]]], now=0.1)
    assert len(got) == 2
    assert core.next_action(0.1) == Done()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"after": "$"}, "after"),
        ({"after": "abc"}, "after"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": "3"}, "timeout_s"),
        ({"timeout_s": float("nan")}, "timeout_s"),
    ],
)
def test_bad_arguments_are_validation_errors(kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ReaderCore(RID, **kwargs)
    assert info.value.field == field


def test_bad_request_id_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        ReaderCore("bad}id")


def test_resuming_at_the_final_record_ends_at_once() -> None:
    records = simple_stream(3)
    final = entry(records[-1])
    core = ReaderCore(RID, after=final[0].decode())
    assert core.next_action(0.0) == Probe()
    core.on_probe([final], True)
    assert core.next_action(0.0) == Done()  # no wait for timeout_s, no StreamTimeout


def test_resuming_past_a_failed_final_record_raises() -> None:
    failed = Record(seq=1, finish_reason="error", usage=USAGE, error=ErrorInfo("model_error", "boom"))
    core = ReaderCore(RID, after="2-0")
    core.next_action(0.0)
    core.on_probe([entry(failed)], True)
    with pytest.raises(GenerationFailed, match="boom"):
        core.next_action(0.0)


def test_resuming_before_the_final_record_still_reads_it() -> None:
    records = simple_stream(3)
    core = ReaderCore(RID, after="1-0")
    core.next_action(0.0)
    core.on_probe([entry(records[-1])], True)
    assert isinstance(core.next_action(0.0), Read)


# -- Redis unreachable: backoff from the cursor, raise only after timeout_s ------------------


def test_a_failed_read_backs_off_then_probes_again_and_goes_on_from_the_cursor() -> None:
    from consumer.core import Backoff
    from schemas.errors import RelayConnectionError

    core = ReaderCore("r", timeout_s=10)
    assert isinstance(core.next_action(0.0), Probe)
    core.on_probe([], True)
    first = simple_stream(3)
    core.on_entries([entry(first[0])], 0.1)
    core.on_connection_error(RelayConnectionError("down"), 0.2)
    delays = []
    for t in (0.3, 0.5, 0.9):
        action = core.next_action(t)
        assert isinstance(action, Backoff)
        delays.append(action.delay_s)
        assert isinstance(core.next_action(t), Probe)  # a restarted server may have lost it
        core.on_connection_error(RelayConnectionError("down"), t)
    assert delays == sorted(delays) and delays[0] > 0
    assert isinstance(core.next_action(1.0), Backoff)
    core.on_probe([entry(first[0])], True)
    read = core.next_action(1.1)
    assert isinstance(read, Read) and read.after == "1-0"  # the cursor survived
    assert [r.seq for r in core.on_entries([entry(r) for r in first[1:]], 1.2)] == [1, 2]


def test_redis_unreachable_for_timeout_s_raises_the_connection_error() -> None:
    from schemas.errors import RelayConnectionError

    core = ReaderCore("r", timeout_s=2)
    core.next_action(0.0)
    error = RelayConnectionError("Redis at redis://x is unreachable")
    core.on_connection_error(error, 0.0)
    core.next_action(1.0)  # a backoff
    core.on_connection_error(error, 1.0)
    with pytest.raises(RelayConnectionError):
        core.next_action(2.5)


# -- queued is not silent: timeout_s runs only once a worker has the request ---------------


def idle_round(core: ReaderCore, now: float, *, lease: bool, status: bytes | None, last: Any = ()) -> Any:
    """An empty read at ``now``, the probe it triggers (with the given lease/status), and
    the action after it."""
    core.on_entries([], now=now)
    assert core.next_action(now) == Probe()
    core.on_probe(list(last), True, lease, status)
    return core.next_action(now)


def test_a_queued_request_waits_past_timeout_s() -> None:
    core = ReaderCore(RID, timeout_s=2.0)
    assert core.next_action(0.0) == Probe()
    core.on_probe([], True, False, b"queued")
    assert core.queued
    for now in (1.0, 5.0, 100.0, 10_000.0):
        assert idle_round(core, now, lease=False, status=b"queued") == Read(MAX_BLOCK_MS, READ_COUNT, "0")


def test_timeout_s_counts_from_when_the_request_leaves_the_queue() -> None:
    core = ReaderCore(RID, timeout_s=2.0)
    core.next_action(0.0)
    core.on_probe([], True, False, b"queued")
    assert isinstance(idle_round(core, 50.0, lease=False, status=b"queued"), Read)
    # A worker claimed it (lease, status running) but has not written yet: silence counts now.
    assert idle_round(core, 51.0, lease=True, status=b"running") == Read(1000, READ_COUNT, "0")
    assert not core.queued
    with pytest.raises(StreamTimeout):
        idle_round(core, 52.5, lease=True, status=b"running")


def test_queue_timeout_s_bounds_the_wait_in_the_queue() -> None:
    core = ReaderCore(RID, timeout_s=None, queue_timeout_s=10.0)
    core.next_action(0.0)
    core.on_probe([], True, False, None)  # a meta without status (an older producer) is queued
    assert core.queued
    assert core.next_action(0.0) == Read(MAX_BLOCK_MS, READ_COUNT, "0")  # the queue clock starts
    assert core.next_action(9.5) == Read(500, READ_COUNT, "0")  # never blocks past the limit
    assert isinstance(idle_round(core, 9.9, lease=False, status=None), Read)
    with pytest.raises(StreamTimeout, match="still queued"):
        idle_round(core, 10.0, lease=False, status=None)


@pytest.mark.parametrize(
    ("last", "meta", "lease", "status"),
    [
        (MID, True, False, b"running"),  # records: running (its lease may be between renewals)
        ([], True, True, b"running"),  # a worker holds it
        ([], True, False, b"running"),  # its worker died before the first record: takeover
        ([], True, None, b"queued"),  # a shell that did not ask about the lease
    ],
)
def test_not_queued_means_timeout_s_applies(last: Any, meta: bool, lease: bool | None, status: bytes) -> None:
    core = ReaderCore(RID, timeout_s=1.0)
    core.next_action(0.0)
    core.on_probe(last, meta, lease, status)
    assert not core.queued
    core.on_entries([], now=2.0)
    core.next_action(2.0)
    core.on_probe(last, meta, lease, status)
    with pytest.raises(StreamTimeout):
        core.next_action(2.0)


def test_bad_queue_timeout_is_refused_by_name() -> None:
    with pytest.raises(ValidationError) as info:
        ReaderCore(RID, queue_timeout_s=-1)
    assert info.value.field == "queue_timeout_s"
