"""The worker's write path as one sans-IO core: every decision about a request's lifecycle.

A request goes: read what its stream holds and claim its lease → run, resume or refuse →
publish every step under the lease fence → finish, lose the lease, or hand it off.  The
I/O shells (`workers.tasks.handle_job`, `workers.runner.EngineRunner`,
`workers.publisher.StreamSink`) perform the Redis commands this module plans and feed the
replies back; everything here is plain Python with unit tests for each branch.

- `decide_start` turns a claim reply, the records already in the stream and the cancel
  flag into a `Start` (run / resume / refuse with records / settle at once).
- `WriteBook` keeps, per held request, its lease owner value and the id of the last entry
  this worker wrote; `plan` turns one step's emissions into one `PublishCall` per request
  (the publish script's arguments, see workers/lease.py) and `on_replies` classifies the
  structured replies into a `StepOutcome` (cancelled, lost, conflicts, finished), never by
  matching error text.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, field

from schemas import keys
from schemas.errors import SchemaError
from schemas.records import ErrorInfo, Record, encode
from workers.engine.engine import Emission, Resume
from workers.resume import resume_state

FINAL_STATUS = {"stop": "finished", "length": "finished", "cancelled": "cancelled", "error": "failed"}


class Claim(enum.Enum):
    CLAIMED = "claimed"  # the lease is ours now
    OWNED = "owned"  # another lease holder (live, or this very worker)
    ENDED = "ended"  # the stream already has its last record


@dataclass(frozen=True)
class ClaimReply:
    kind: Claim
    owner: str = ""  # ours when CLAIMED, the holder's when OWNED, the meta status when ENDED
    attempt: int = 0

    @classmethod
    def parse(cls, reply: Sequence[object]) -> ClaimReply:
        kind = Claim(_text(reply[0]))
        if kind is Claim.CLAIMED:
            return cls(kind, _text(reply[1]), int(reply[2]))  # type: ignore[call-overload]
        return cls(kind, _text(reply[1]) if len(reply) > 1 else "")


class StartKind(enum.Enum):
    RUN = "run"  # give the job to the engine (resume is None or what was published)
    REFUSE = "refuse"  # end it with final records without the model (reason + error)
    SETTLE = "settle"  # nothing to do here: acknowledge the message at once (outcome says why)
    UNREADABLE = "unreadable"  # the stream holds an entry no reader can decode: end it after that entry


@dataclass(frozen=True)
class Start:
    kind: StartKind
    outcome: str = ""  # for SETTLE: finished | already_owned
    resume: Resume | None = None
    reason: str = "error"  # for REFUSE/UNREADABLE: the finish reason of the final records
    error: ErrorInfo | None = None
    next_seq: int = 0  # for UNREADABLE: the seq after the last entry


def decide_start(
    claim: ClaimReply,
    records: Sequence[Record] | SchemaError,
    *,
    last_entry_id: str,
    cancelled: bool,
    serves_model: bool,
    model: str | None,
    max_attempts: int,
) -> Start:
    """What a worker does with a request it was handed (a task) or found (a takeover)."""
    if claim.kind is Claim.ENDED:
        return Start(StartKind.SETTLE, "finished")
    if claim.kind is Claim.OWNED:
        return Start(StartKind.SETTLE, "already_owned")
    if isinstance(records, SchemaError):
        error = ErrorInfo("internal", f"the stream holds a record no reader can decode: {records}")
        return Start(StartKind.UNREADABLE, error=error, next_seq=keys.seq_of_entry_id(last_entry_id) + 1)
    resume = resume_state(records)
    if claim.attempt > max_attempts:
        message = f"gave up after {claim.attempt - 1} workers died running this request (a poison request)"
        return Start(StartKind.REFUSE, resume=resume, error=ErrorInfo("too_many_attempts", message))
    if not serves_model:
        error = ErrorInfo("unknown_model", f"model {model!r} is not served by this worker")
        return Start(StartKind.REFUSE, resume=resume, error=error)
    if cancelled:
        return Start(StartKind.REFUSE, resume=resume, reason="cancelled")
    return Start(StartKind.RUN, resume=resume)


class Write(enum.Enum):
    OK = "ok"
    LOST = "lost"  # the lease belongs to another worker now: stop, write nothing more
    CONFLICT = "conflict"  # the stream moved under us (a foreign entry): stop writing it


@dataclass
class Held:
    """One request this worker holds a lease on."""

    request_id: str
    owner: str  # the lease value: "<worker id>/<attempt>"
    last_id: str  # the stream's last entry as this worker knows it ("0-0": empty)
    ttl_s: int
    tokens: int = 0  # completion tokens published so far (all choices)


@dataclass(frozen=True)
class PublishCall:
    request_id: str
    keys: tuple[str, str, str, str]
    args: tuple[bytes | str, ...]
    new_last_id: str
    final: bool
    status: str = ""  # when final: finished | cancelled | failed
    tokens: int = 0  # completion tokens published once this call lands (all choices)
    last: Record | None = None  # the call's last record (usage and finish reason when final)


@dataclass
class StepOutcome:
    cancelled: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)
    conflicts: set[str] = field(default_factory=set)
    finished: set[str] = field(default_factory=set)  # the last record is in Redis
    broken: dict[str, str] = field(default_factory=dict)  # the server refused the write for good


class WriteBook:
    """Per-request write state of one worker, and the plans for each step's round trip."""

    def __init__(self, lease_s: float) -> None:
        self.lease_ms = max(1, int(lease_s * 1000))
        self.held: dict[str, Held] = {}

    def hold(self, request_id: str, owner: str, last_id: str, ttl_s: int, tokens: int = 0) -> None:
        self.held[request_id] = Held(request_id, owner, last_id, ttl_s, tokens)

    def forget(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            self.held.pop(rid, None)

    def plan(self, emissions: Sequence[Emission], watch: Iterable[str]) -> list[PublishCall]:
        """One call per held request that has records or is still active (lease renewal and
        cancel check).  Emissions of a request this worker does not hold are a bug upstream:
        they raise rather than being written unfenced."""
        by_rid: dict[str, list[Record]] = {}
        for rid, record in emissions:
            by_rid.setdefault(rid, []).append(record)
        for rid in watch:
            by_rid.setdefault(rid, [])
        unheld = [rid for rid in by_rid if rid not in self.held]
        if unheld:
            raise KeyError(f"records for requests this worker holds no lease on: {unheld}")
        return [self._call(self.held[rid], records) for rid, records in by_rid.items()]

    def index_entries(self, calls: Sequence[PublishCall], now: float | None = None) -> list[tuple[str, str]]:
        """(due ms, request id) for the global lease index: when a scan looks at the request.

        For a call that keeps its lease, the lease's expiry.  A final call's entry stays too,
        due one lease period later: the scan then drops it if the stream still ends, and takes
        the request over if the final record was lost with a failed-over master (see
        workers/lease.py)."""
        due = str(int((now if now is not None else time.time()) * 1000) + self.lease_ms)
        return [(due, c.request_id) for c in calls]

    def on_replies(self, calls: Sequence[PublishCall], replies: Sequence[object]) -> StepOutcome:
        out = StepOutcome()
        for call, reply in zip(calls, replies, strict=True):
            rid = call.request_id
            if isinstance(reply, Exception):
                # e.g. WRONGTYPE: something else sits at the stream's key.  Retrying cannot help.
                out.broken[rid] = f"{type(reply).__name__}: {reply}"
                self.held.pop(rid, None)
                continue
            kind = Write(_text(reply[0]))  # type: ignore[index]
            if kind is Write.OK:
                held = self.held.get(rid)
                if held is not None:
                    held.last_id = call.new_last_id
                if reply[1] in (1, b"1", "1"):  # type: ignore[index]
                    out.cancelled.add(rid)
                if call.final:
                    out.finished.add(rid)
                    self.held.pop(rid, None)
            elif kind is Write.LOST:
                out.lost.add(rid)
                self.held.pop(rid, None)
            else:
                out.conflicts.add(rid)
                self.held.pop(rid, None)
        out.cancelled -= out.finished
        return out

    def _call(self, held: Held, records: list[Record]) -> PublishCall:
        args: list[bytes | str] = []
        final_status = ""
        for r in records:
            args += [keys.entry_id_for(r.seq), encode(r)]
            held.tokens += len(r.token_ids)
            if r.is_last:
                final_status = _final_status(r, records)
        new_last = keys.entry_id_for(records[-1].seq) if records else held.last_id
        rid = held.request_id
        header: list[bytes | str] = [
            held.owner,
            str(self.lease_ms),
            str(held.ttl_s),
            held.last_id,
            final_status,
            str(held.tokens),
        ]
        return PublishCall(
            rid,
            (keys.deltas_key(rid), keys.lease_key(rid), keys.meta_key(rid), keys.cancel_key(rid)),
            tuple(header + args),
            new_last,
            bool(final_status),
            final_status,
            held.tokens,
            records[-1] if records else None,
        )


@dataclass(frozen=True)
class DueEntries:
    """A scan's verdict on the lease-index entries that came due."""

    prune: list[str]  # ended (or expired with their keys): drop from the index
    orphans: list[str]  # not ended and not ours: take over (oldest first)


def triage_due(due: Sequence[str], ended: Sequence[object], held: Container[str]) -> DueEntries:
    """Split due entries by the ``ENDED`` script's replies (one per entry, in order).

    Requests this worker holds are left alone (their lease is renewed at its next step).  A
    reply that is an error (a node refusing for now) keeps the entry for the next scan: an
    entry is dropped only on a positive answer that its stream ended."""
    prune: list[str] = []
    orphans: list[str] = []
    for rid, reply in zip(due, ended, strict=True):
        if rid in held or isinstance(reply, BaseException):
            continue
        (prune if reply in (1, b"1", "1") else orphans).append(rid)
    return DueEntries(prune, orphans)


def _final_status(last: Record, records: Sequence[Record]) -> str:
    """The request's status from the finish reasons of its last step: failed if one says
    error, cancelled if one says cancelled, else finished.  The last step is enough because
    the engine ends every unfinished choice of a request together on an error or a cancel."""
    reasons = {r.finish_reason for r in records if r.finish_reason} | {last.finish_reason}
    for reason in ("error", "cancelled"):
        if reason in reasons:
            return FINAL_STATUS[reason]
    return "finished"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
