"""The worker's sans-IO lifecycle core (workers/lifecycle.py), fed scripted claim replies,
scripted records and scripted publish-script replies: no Redis, no model, no clock but the
values given."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from redis.exceptions import ResponseError

from schemas import keys
from schemas.errors import SchemaError
from schemas.records import ErrorInfo, Record, Usage, decode, encode
from workers.engine.engine import Emission, Resume
from workers.lifecycle import (
    FINAL_STATUS,
    Claim,
    ClaimReply,
    DueEntries,
    PublishCall,
    Start,
    StartKind,
    StepOutcome,
    Write,
    WriteBook,
    decide_start,
    triage_due,
)

RID = "req-life-1"
OTHER = "req-life-2"
OWNER = "worker-a/1"
USAGE = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7)
HEADER = 6  # owner, lease ms, ttl s, expected last id, final status, tokens


def stream(finish: str = "stop") -> list[Record]:
    """Two choices; choice 0 ends first, choice 1's last record ends the stream."""
    return [
        Record(seq=0, index=0, text="a", token_ids=[1]),
        Record(seq=1, index=1, text="x", token_ids=[10, 11]),
        Record(seq=2, index=0, text="b", token_ids=[2], finish_reason="length"),
        Record(seq=3, index=1, text="y", token_ids=[12], finish_reason=finish, usage=USAGE),
    ]


def claimed(attempt: int = 1) -> ClaimReply:
    return ClaimReply(Claim.CLAIMED, OWNER, attempt)


def start(
    claim: ClaimReply | None = None,
    records: Sequence[Record] | SchemaError = (),
    *,
    last_entry_id: str = "0-0",
    cancelled: bool = False,
    serves_model: bool = True,
    max_attempts: int = 3,
) -> Start:
    return decide_start(
        claim if claim is not None else claimed(),
        records,
        last_entry_id=last_entry_id,
        cancelled=cancelled,
        serves_model=serves_model,
        model="tiny",
        max_attempts=max_attempts,
    )


def book(*rids: str, lease_s: float = 5.0, last_id: str = "0-0", tokens: int = 0) -> WriteBook:
    b = WriteBook(lease_s)
    for rid in rids or (RID,):
        b.hold(rid, OWNER, last_id, 3600, tokens)
    return b


def emissions(records: Sequence[Record], rid: str = RID) -> list[Emission]:
    return [(rid, r) for r in records]


def pairs(call: PublishCall) -> list[tuple[str, Record]]:
    """The (entry id, decoded record) pairs after the header."""
    body = call.args[HEADER:]
    assert len(body) % 2 == 0
    out = []
    for eid, data in zip(body[::2], body[1::2], strict=True):
        assert isinstance(eid, str) and isinstance(data, bytes)
        out.append((eid, decode(data)))
    return out


# -- ClaimReply.parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [[b"claimed", b"worker-a/2", 2], ["claimed", "worker-a/2", 2], [b"claimed", b"worker-a/2", b"2"]],
)
def test_parse_claimed(reply: list[object]) -> None:
    assert ClaimReply.parse(reply) == ClaimReply(Claim.CLAIMED, "worker-a/2", 2)


@pytest.mark.parametrize("reply", [[b"owned", b"worker-b/1"], ["owned", "worker-b/1"]])
def test_parse_owned(reply: list[object]) -> None:
    parsed = ClaimReply.parse(reply)
    assert parsed == ClaimReply(Claim.OWNED, "worker-b/1", 0)
    assert parsed.attempt == 0


@pytest.mark.parametrize(
    ("reply", "status"),
    [([b"ended", b"finished"], "finished"), (["ended", "cancelled"], "cancelled"), ([b"ended"], ""), (["ended"], "")],
)
def test_parse_ended(reply: list[object], status: str) -> None:
    # The claim script answers {'ended', status}; the status lands in `owner`.
    assert ClaimReply.parse(reply) == ClaimReply(Claim.ENDED, status, 0)


def test_parse_unknown_kind_raises() -> None:
    with pytest.raises(ValueError):
        ClaimReply.parse([b"stolen", b"x"])


# -- decide_start -----------------------------------------------------------------------------


def test_ended_settles_finished_before_anything_else() -> None:
    # Even an unreadable stream, too many attempts or a cancel: the stream has ended.
    s = start(
        ClaimReply(Claim.ENDED, "failed"),
        SchemaError("bad"),
        cancelled=True,
        serves_model=False,
        max_attempts=0,
    )
    assert s == Start(StartKind.SETTLE, "finished")
    assert s.resume is None and s.error is None


def test_owned_settles_already_owned() -> None:
    s = start(ClaimReply(Claim.OWNED, "worker-b/3"), stream()[:2], cancelled=True, serves_model=False)
    assert s == Start(StartKind.SETTLE, "already_owned")


@pytest.mark.parametrize(("last_entry_id", "next_seq"), [("5-0", 5), ("1-0", 1), ("12-0", 12), ("0-0", 0)])
def test_unreadable_stream_ends_after_its_last_entry(last_entry_id: str, next_seq: int) -> None:
    s = start(records=SchemaError("record is not valid msgpack"), last_entry_id=last_entry_id)
    assert s.kind is StartKind.UNREADABLE
    assert s.next_seq == next_seq
    assert s.resume is None
    assert s.reason == "error"
    assert s.error is not None and s.error.type == "internal"
    assert "record is not valid msgpack" in s.error.message


def test_unreadable_wins_over_too_many_attempts_and_cancel() -> None:
    s = start(claimed(9), SchemaError("x"), last_entry_id="3-0", cancelled=True, serves_model=False)
    assert s.kind is StartKind.UNREADABLE and s.next_seq == 3


def test_too_many_attempts_refuses_with_published_state() -> None:
    records = stream()[:3]
    s = start(claimed(4), records, max_attempts=3, cancelled=True, serves_model=False)
    assert s.kind is StartKind.REFUSE
    assert s.reason == "error"
    assert s.error is not None and s.error.type == "too_many_attempts"
    assert "gave up after 3 workers died" in s.error.message
    assert s.resume == Resume(
        next_seq=3, tokens={0: [1, 2], 1: [10, 11]}, texts={0: "ab", 1: "x"}, finished={0: "length"}
    )


def test_too_many_attempts_on_an_empty_stream() -> None:
    s = start(claimed(2), [], max_attempts=1)
    assert s.kind is StartKind.REFUSE and s.resume is None
    assert s.error == ErrorInfo("too_many_attempts", s.error.message if s.error else "")
    assert s.error is not None and "gave up after 1 workers died" in s.error.message


def test_attempt_equal_to_max_still_runs() -> None:
    s = start(claimed(3), [], max_attempts=3)
    assert s == Start(StartKind.RUN, resume=None)


def test_unknown_model_refuses() -> None:
    records = stream()[:1]
    s = start(records=records, serves_model=False, cancelled=True)
    assert s.kind is StartKind.REFUSE
    assert s.reason == "error"
    assert s.error is not None and s.error.type == "unknown_model"
    assert "'tiny'" in s.error.message
    assert s.resume == Resume(next_seq=1, tokens={0: [1]}, texts={0: "a"}, finished={})


def test_cancelled_refuses_with_reason_cancelled() -> None:
    s = start(records=stream()[:2], cancelled=True)
    assert s.kind is StartKind.REFUSE
    assert s.reason == "cancelled"
    assert s.error is None
    assert s.resume == Resume(next_seq=2, tokens={0: [1], 1: [10, 11]}, texts={0: "a", 1: "x"}, finished={})


def test_cancelled_on_an_empty_stream() -> None:
    s = start(records=[], cancelled=True)
    assert s == Start(StartKind.REFUSE, resume=None, reason="cancelled")


def test_run_fresh() -> None:
    s = start(records=[])
    assert s == Start(StartKind.RUN)
    assert s.resume is None and s.error is None


def test_run_resumes_what_was_published() -> None:
    records = [
        Record(seq=0, index=0, text="he", token_ids=[5, 6]),
        Record(seq=1, index=1, text="wo", token_ids=[7]),
        Record(seq=2, index=0, text="llo", token_ids=[8], finish_reason="stop"),
        Record(seq=3, index=1, text="", token_ids=[9]),
        Record(seq=4, index=2, text="!", token_ids=[]),
    ]
    s = start(claimed(2), records)
    assert s.kind is StartKind.RUN
    assert s.resume == Resume(
        next_seq=5,
        tokens={0: [5, 6, 8], 1: [7, 9], 2: []},
        texts={0: "hello", 1: "wo", 2: "!"},
        finished={0: "stop"},
    )


# -- WriteBook.plan ---------------------------------------------------------------------------


def test_lease_ms() -> None:
    assert WriteBook(5).lease_ms == 5000
    assert WriteBook(0.25).lease_ms == 250
    assert WriteBook(0).lease_ms == 1
    assert WriteBook(0.0001).lease_ms == 1


def test_plan_args_of_one_step() -> None:
    b = book(lease_s=2.5)
    records = stream()[:2]
    [call] = b.plan(emissions(records), watch=[RID])
    assert call.request_id == RID
    assert call.keys == (keys.deltas_key(RID), keys.lease_key(RID), keys.meta_key(RID), keys.cancel_key(RID))
    assert call.args[:HEADER] == (OWNER, "2500", "3600", "0-0", "", "3")
    assert call.args[HEADER:] == ("1-0", encode(records[0]), "2-0", encode(records[1]))
    assert pairs(call) == [("1-0", records[0]), ("2-0", records[1])]
    assert call.new_last_id == "2-0"
    assert call.final is False


def test_plan_continues_from_a_resumed_stream() -> None:
    b = book(last_id="3-0", tokens=4)
    rec = Record(seq=3, index=0, text="c", token_ids=[3, 4])
    [call] = b.plan(emissions([rec]), watch=[])
    assert call.args[:HEADER] == (OWNER, "5000", "3600", "3-0", "", "6")
    assert call.args[HEADER:] == ("4-0", encode(rec))
    assert call.new_last_id == "4-0"


def test_plan_token_count_accumulates_across_steps() -> None:
    b = book()
    recs = stream()
    [c1] = b.plan(emissions(recs[:2]), watch=[RID])
    b.on_replies([c1], [[b"ok", 0]])
    [c2] = b.plan(emissions(recs[2:]), watch=[RID])
    assert c1.args[5] == "3"
    assert c2.args[5] == "5"
    assert c2.args[3] == "2-0"
    assert c2.args[4] == "finished"
    assert c2.final is True


def test_watch_only_request_gets_a_renewal_call() -> None:
    b = book(last_id="7-0", tokens=9)
    [call] = b.plan([], watch=[RID])
    assert call.args == (OWNER, "5000", "3600", "7-0", "", "9")
    assert call.new_last_id == "7-0"
    assert call.final is False


def test_plan_one_call_per_request_in_order() -> None:
    b = book(RID, OTHER)
    r0 = Record(seq=0, text="a", token_ids=[1])
    r1 = Record(seq=1, text="b", token_ids=[2])
    o0 = Record(seq=0, text="z", token_ids=[3])
    calls = b.plan([(RID, r0), (OTHER, o0), (RID, r1)], watch=[OTHER, RID])
    assert [c.request_id for c in calls] == [RID, OTHER]
    assert calls[0].args[HEADER:] == ("1-0", encode(r0), "2-0", encode(r1))
    assert calls[1].args[HEADER:] == ("1-0", encode(o0))


def test_plan_watch_adds_a_renewal_for_idle_held_requests() -> None:
    b = book(RID, OTHER)
    calls = b.plan(emissions(stream()[:1]), watch=[RID, OTHER])
    assert [c.request_id for c in calls] == [RID, OTHER]
    assert len(calls[1].args) == HEADER
    assert len(calls[0].args) == HEADER + 2


def test_held_request_not_watched_and_without_records_gets_no_call() -> None:
    b = book(RID, OTHER)
    calls = b.plan([], watch=[RID])
    assert [c.request_id for c in calls] == [RID]


@pytest.mark.parametrize("where", ["emissions", "watch"])
def test_plan_refuses_a_request_not_held(where: str) -> None:
    b = book()
    ems = emissions(stream()[:1], rid=OTHER) if where == "emissions" else []
    watch = [OTHER] if where == "watch" else [RID]
    with pytest.raises(KeyError, match=OTHER):
        b.plan(ems, watch=watch)


def test_plan_refusal_writes_nothing() -> None:
    b = book()
    with pytest.raises(KeyError):
        b.plan([(RID, Record(seq=0, token_ids=[1, 2])), (OTHER, Record(seq=0))], watch=[])
    assert b.held[RID].tokens == 0


def test_forgotten_request_is_not_held() -> None:
    b = book(RID, OTHER)
    b.forget([RID, "never-held"])
    assert set(b.held) == {OTHER}
    with pytest.raises(KeyError):
        b.plan([], watch=[RID])


@pytest.mark.parametrize(
    ("reasons", "status"),
    [
        (("stop", "stop"), "finished"),
        (("length", "stop"), "finished"),
        (("stop", "length"), "finished"),
        (("stop", "cancelled"), "cancelled"),
        (("cancelled", "stop"), "cancelled"),
        (("error", "stop"), "failed"),
        (("stop", "error"), "failed"),
        (("cancelled", "error"), "failed"),
        (("error", "cancelled"), "failed"),
        ((None, "cancelled"), "cancelled"),
        ((None, "error"), "failed"),
        ((None, None), "finished"),
    ],
)
def test_final_status_from_the_step_finish_reasons(reasons: tuple[str | None, str | None], status: str) -> None:
    first, last = reasons
    records = [
        Record(seq=0, index=0, text="a", token_ids=[1], finish_reason=first),
        Record(seq=1, index=1, text="b", token_ids=[2], finish_reason=last, usage=USAGE),
    ]
    [call] = book().plan(emissions(records), watch=[RID])
    assert call.final is True
    assert call.args[4] == status
    assert call.new_last_id == "2-0"


@pytest.mark.parametrize(("reason", "status"), sorted(FINAL_STATUS.items()))
def test_final_status_of_a_single_last_record(reason: str, status: str) -> None:
    [call] = book().plan(emissions([Record(seq=0, finish_reason=reason, usage=USAGE)]), watch=[])
    assert call.args[4] == status and call.final


def test_index_entries_keep_final_calls_due_one_lease_later() -> None:
    """A finished request stays in the lease index, due like a lease: a scan checks then that
    its final record survived (a failed-over master can lose it) before dropping it."""
    b = book(RID, OTHER, "req-3", lease_s=2)
    calls = b.plan(
        [(OTHER, Record(seq=0, token_ids=[1], finish_reason="stop", usage=USAGE))], watch=[RID, OTHER, "req-3"]
    )
    assert [c.final for c in calls] == [True, False, False]
    assert b.index_entries(calls, now=1000.5) == [("1002500", OTHER), ("1002500", RID), ("1002500", "req-3")]
    assert b.index_entries(calls, now=0.0) == [("2000", OTHER), ("2000", RID), ("2000", "req-3")]
    assert b.index_entries([]) == []


# -- triage_due: the scan's verdict on due lease-index entries ---------------------------------


def test_triage_prunes_ended_and_returns_the_rest_in_order() -> None:
    verdict = triage_due(["a", "b", "c", "d"], [1, 0, b"1", 0], held=set())
    assert verdict == DueEntries(prune=["a", "c"], orphans=["b", "d"])


def test_triage_leaves_held_requests_and_refused_checks_alone() -> None:
    """Ours: renewed at our next step.  An error reply (a node failing over): neither dropped
    nor taken over now; the next scan asks again."""
    busy = ResponseError("TRYAGAIN")
    verdict = triage_due(["mine", "x", "y"], [0, busy, 1], held={"mine"})
    assert verdict == DueEntries(prune=["y"], orphans=[])


def test_triage_of_nothing_due() -> None:
    assert triage_due([], [], held={"a"}) == DueEntries([], [])


def test_triage_needs_one_reply_per_entry() -> None:
    with pytest.raises(ValueError):
        triage_due(["a", "b"], [1], held=())


def test_index_entries_use_the_clock_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import workers.lifecycle as lifecycle

    monkeypatch.setattr(lifecycle.time, "time", lambda: 50.0)
    b = book(lease_s=1)
    assert b.index_entries(b.plan([], watch=[RID])) == [("51000", RID)]


# -- WriteBook.on_replies ---------------------------------------------------------------------


def one_step(b: WriteBook, records: Sequence[Record], rid: str = RID) -> list[PublishCall]:
    return b.plan(emissions(records, rid), watch=[rid])


@pytest.mark.parametrize("reply", [[b"ok", 0], ["ok", 0], [b"ok", b"0"], ["ok", "0"]])
def test_ok_advances_the_last_id(reply: list[object]) -> None:
    b = book()
    calls = one_step(b, stream()[:2])
    out = b.on_replies(calls, [reply])
    assert out == StepOutcome()
    assert b.held[RID].last_id == "2-0"
    [nxt] = b.plan([], watch=[RID])
    assert nxt.args[3] == "2-0"


@pytest.mark.parametrize("flag", [1, b"1", "1"])
def test_ok_with_cancel_flag_reports_cancelled(flag: object) -> None:
    b = book()
    calls = one_step(b, stream()[:1])
    out = b.on_replies(calls, [[b"ok", flag]])
    assert out == StepOutcome(cancelled={RID})
    assert RID in b.held
    assert b.held[RID].last_id == "1-0"


def test_ok_final_finishes_and_forgets() -> None:
    b = book()
    calls = one_step(b, stream())
    out = b.on_replies(calls, [[b"ok", 0]])
    assert out == StepOutcome(finished={RID})
    assert RID not in b.held


def test_final_and_cancelled_is_only_finished() -> None:
    b = book(RID, OTHER)
    calls = b.plan(emissions(stream()) + emissions(stream()[:1], OTHER), watch=[])
    out = b.on_replies(calls, [[b"ok", 1], [b"ok", 1]])
    assert out.finished == {RID}
    assert out.cancelled == {OTHER}
    assert set(b.held) == {OTHER}


@pytest.mark.parametrize("reply", [[b"lost", b"worker-b/2"], ["lost", ""]])
def test_lost_drops_the_request(reply: list[object]) -> None:
    b = book()
    calls = one_step(b, stream()[:2])
    out = b.on_replies(calls, [reply])
    assert out == StepOutcome(lost={RID})
    assert RID not in b.held


@pytest.mark.parametrize("reply", [[b"conflict", b"9-0"], ["conflict", "0-0"]])
def test_conflict_drops_the_request(reply: list[object]) -> None:
    b = book()
    calls = one_step(b, stream())
    out = b.on_replies(calls, [reply])
    assert out == StepOutcome(conflicts={RID})
    assert RID not in b.held


def test_exception_reply_is_broken() -> None:
    b = book()
    calls = one_step(b, stream()[:1])
    err = RuntimeError("WRONGTYPE Operation against a key holding the wrong kind of value")
    out = b.on_replies(calls, [err])
    assert out == StepOutcome(
        broken={RID: "RuntimeError: WRONGTYPE Operation against a key holding the wrong kind of value"}
    )
    assert RID not in b.held


def test_mixed_replies_in_one_step() -> None:
    rids = ["r-ok", "r-cancel", "r-lost", "r-conflict", "r-broken", "r-final"]
    b = book(*rids)
    ems = emissions(stream(), "r-final")
    calls = b.plan(ems, watch=rids)
    by_rid = {c.request_id: c for c in calls}
    replies: dict[str, object] = {
        "r-ok": [b"ok", 0],
        "r-cancel": [b"ok", 1],
        "r-lost": [b"lost", b"w/9"],
        "r-conflict": [b"conflict", b"3-0"],
        "r-broken": ValueError("boom"),
        "r-final": [b"ok", 0],
    }
    out = b.on_replies(calls, [replies[c.request_id] for c in calls])
    assert out == StepOutcome(
        cancelled={"r-cancel"},
        lost={"r-lost"},
        conflicts={"r-conflict"},
        finished={"r-final"},
        broken={"r-broken": "ValueError: boom"},
    )
    assert set(b.held) == {"r-ok", "r-cancel"}
    assert by_rid["r-final"].final


def test_replies_must_match_calls() -> None:
    b = book()
    calls = one_step(b, stream()[:1])
    with pytest.raises(ValueError):
        b.on_replies(calls, [])


def test_ok_for_a_request_forgotten_meanwhile() -> None:
    b = book()
    calls = one_step(b, stream()[:1])
    b.forget([RID])
    out = b.on_replies(calls, [[b"ok", 1]])
    assert out == StepOutcome(cancelled={RID})
    assert RID not in b.held


@pytest.mark.parametrize(
    "reply",
    [[b"ok", 0], [b"ok", 1], [b"lost", b"w/2"], [b"conflict", b"1-0"], ConnectionError("reset")],
)
@pytest.mark.parametrize("final", [False, True])
def test_a_resend_gives_the_same_outcome(reply: object, final: bool) -> None:
    b = book()
    records = stream() if final else stream()[:2]
    calls = one_step(b, records)
    first = b.on_replies(calls, [reply])
    held_after = {rid: (h.last_id, h.tokens) for rid, h in b.held.items()}
    second = b.on_replies(calls, [reply])
    assert second == first
    assert {rid: (h.last_id, h.tokens) for rid, h in b.held.items()} == held_after


def test_write_kinds() -> None:
    assert {w.value for w in Write} == {"ok", "lost", "conflict"}
    b = book()
    with pytest.raises(ValueError):
        b.on_replies(one_step(b, []), [[b"maybe", 0]])


# -- property: ids and fences across any split of a stream into steps -------------------------


@st.composite
def split_stream(draw: st.DrawFn) -> tuple[list[Record], list[int], int]:
    """A stream of 1..30 records over up to 3 choices (the last one carries usage), cut into
    steps at drawn positions (steps may be empty: lease renewals), and the seq it starts at
    (a resumed request)."""
    n = draw(st.integers(min_value=1, max_value=30))
    start_seq = draw(st.integers(min_value=0, max_value=50))
    records = [
        Record(
            seq=start_seq + i,
            index=draw(st.integers(min_value=0, max_value=2)),
            text=draw(st.text(max_size=3)),
            token_ids=draw(st.lists(st.integers(min_value=0, max_value=1000), max_size=3)),
        )
        for i in range(n)
    ]
    records[-1].finish_reason = draw(st.sampled_from(["stop", "length", "cancelled", "error"]))
    records[-1].usage = USAGE
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=n), max_size=8)))
    return records, cuts, start_seq


@settings(max_examples=150, deadline=None)
@given(split_stream())
def test_plan_fences_each_step_on_the_previous_one(case: tuple[list[Record], list[int], int]) -> None:
    records, cuts, start_seq = case
    bounds = [0, *cuts, len(records)]
    steps = [records[a:b] for a, b in itertools.pairwise(bounds)]
    initial = "0-0" if start_seq == 0 else keys.entry_id_for(start_seq - 1)
    b = book(last_id=initial)
    expected_last = initial
    previous_seq = start_seq - 1
    all_ids: list[str] = []
    tokens = 0
    for step in steps:
        [call] = b.plan(emissions(step), watch=[RID])
        assert call.args[3] == expected_last
        got = pairs(call)
        assert [r for _eid, r in got] == step
        ids = [eid for eid, _r in got]
        assert ids == [keys.entry_id_for(r.seq) for r in step]
        all_ids += ids
        tokens += sum(len(r.token_ids) for r in step)
        assert call.args[5] == str(tokens)
        assert call.final is (records[-1] in step)
        assert call.args[4] == ("" if not call.final else FINAL_STATUS[records[-1].finish_reason or "stop"])
        if step:
            assert keys.seq_of_entry_id(ids[0]) == previous_seq + 1
            previous_seq = step[-1].seq
            expected_last = keys.entry_id_for(step[-1].seq)
        assert call.new_last_id == expected_last
        out = b.on_replies([call], [[b"ok", 0]])
        if call.final:
            assert out == StepOutcome(finished={RID})
            assert RID not in b.held
            break
        assert b.held[RID].last_id == expected_last
    seqs = [keys.seq_of_entry_id(eid) for eid in all_ids]
    assert seqs == list(range(start_seq, start_seq + len(records)))
    assert all(x < y for x, y in itertools.pairwise(seqs))
