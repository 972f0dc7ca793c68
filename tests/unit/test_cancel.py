"""The cancel script's client side (schemas/cancel.py), fed scripted replies: no Redis."""

from __future__ import annotations

import pytest

from schemas import index, keys
from schemas.cancel import CancelCall, CancelOutcome, NeedRecords, cancelled_records, parse_reply, script_keys
from schemas.errors import RequestNotFound, ValidationError
from schemas.records import decode


def test_keys_share_the_request_slot_and_ids_are_checked() -> None:
    ks = script_keys("r1")
    assert ks == [keys.meta_key("r1"), keys.deltas_key("r1"), keys.lease_key("r1"), keys.cancel_key("r1")]
    assert all("{r1}" in k for k in ks)
    with pytest.raises(ValidationError):
        script_keys("a}b")


def test_parse_reply() -> None:
    assert parse_reply([b"signalled"]) is CancelOutcome.SIGNALLED
    assert parse_reply([b"ended", b"finished"]) is CancelOutcome.ENDED
    assert parse_reply([b"records", b"2", b"12.5"]) == NeedRecords(2, 12.5)
    assert parse_reply([b"records", b"1", b""]) == NeedRecords(1, None)


def test_cancelled_records_one_per_choice_usage_on_the_last() -> None:
    out = cancelled_records(3, 4.5)
    assert [entry_id for entry_id, _ in out] == ["1-0", "2-0", "3-0"]
    records = [decode(data, entry_id) for entry_id, data in out]
    assert [(r.seq, r.index, r.finish_reason, r.text, r.token_ids) for r in records] == [
        (0, 0, "cancelled", "", []),
        (1, 1, "cancelled", "", []),
        (2, 2, "cancelled", "", []),
    ]
    assert [r.usage is not None for r in records] == [False, False, True]
    usage = records[-1].usage
    assert usage is not None and usage.queue_s == 4.5 and usage.completion_tokens == 0 and usage.prompt_tokens == 0


def test_a_queued_request_takes_two_calls_and_updates_the_index() -> None:
    call = CancelCall("r1", 60)
    assert call.args == [60]
    assert call.on_reply([b"records", b"2", b"100.0"], now=103.0) is None
    assert call.args[0] == 60 and call.args[1::2] == ["1-0", "2-0"]
    assert call.on_reply([b"cancelled"], now=103.1) is CancelOutcome.CANCELLED
    commands = call.index_commands(now=103.1)
    assert ("ZREM", keys.INDEX_QUEUED_KEY, "r1") in commands
    assert any(c[0] == "XADD" and '"s":"cancelled"' in c[-1] for c in commands)
    assert all(c[1] != keys.INDEX_RUNNING_KEY or c[0] == "ZREM" for c in commands)
    assert index.TERMINAL  # the status written is one of them


def test_running_and_ended_take_one_call_and_touch_no_index() -> None:
    for reply, outcome in (([b"signalled"], CancelOutcome.SIGNALLED), ([b"ended", b"failed"], CancelOutcome.ENDED)):
        call = CancelCall("r1", 60)
        assert call.on_reply(reply, now=0.0) is outcome
        assert call.index_commands() == []


def test_unknown_raises_request_not_found() -> None:
    call = CancelCall("r1", 60)
    with pytest.raises(RequestNotFound) as info:
        call.on_reply([b"unknown"], now=0.0)
    assert info.value.request_id == "r1"


def test_a_meta_that_keeps_asking_for_records_does_not_loop() -> None:
    call = CancelCall("r1", 60)
    assert call.on_reply([b"records", b"1", b"0"], 1.0) is None
    assert call.on_reply([b"records", b"2", b"0"], 1.0) is None
    assert call.on_reply([b"records", b"3", b"0"], 1.0) is CancelOutcome.SIGNALLED
