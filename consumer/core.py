"""The sans-IO reader: every decision about reading one request's stream, and no I/O.

A shell loops::

    while not isinstance(action := core.next_action(clock()), Done):
        if isinstance(action, Probe):
            core.on_probe(*<XREVRANGE deltas + - COUNT 1, EXISTS meta, EXISTS lease, HGET meta status>)
        elif isinstance(action, Backoff):
            sleep(action.delay_s)
        else:
            yield from core.on_reply(<XREAD {deltas: action.after} COUNT BLOCK>, clock())

and reports a failed round trip with ``core.on_connection_error(exc, clock())``.
`next_action` raises the stream's outcome when there is one to raise (StreamTimeout,
RequestNotFound, SchemaError, GenerationFailed); the records of a reply are always handed
back before any error found in that reply, so a caller sees everything valid first.

Queued is not silent.  A request that is still waiting for a worker (meta exists, no stream
yet, no worker's lease key, meta status ``queued``) has nothing to say yet, however long the
queue: while it is queued ``timeout_s`` does not run (it measures the silence of a *running*
request, from the moment it leaves the queue).  ``queue_timeout_s`` bounds the time in the
queue instead: None (the default) waits as long as the request exists; its keys expire after
their TTL (1 h by default), and then the reader raises RequestNotFound.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.result import Result, ResultBuilder
from schemas import keys
from schemas.config import MAX_N
from schemas.errors import GenerationFailed, RequestNotFound, SchemaError, StreamTimeout, ValidationError
from schemas.records import FIELD, Record, decode

# A BLOCK near the socket timeout (redis-py 8.1 default 5 s; 10 s from schemas.redis_util.connect)
# would look like a dead connection: stay far below it and loop instead.
MAX_BLOCK_MS = 1000
READ_COUNT = 512
START = "0"
_ENTRY_ID_RE = re.compile(r"^\d+(-\d+)?$")


@dataclass(frozen=True)
class Probe:
    """Ask whether the request exists, whether it is still queued and how its stream ends:
    XREVRANGE deltas + - COUNT 1, EXISTS meta, EXISTS lease, HGET meta status (one round trip)."""


@dataclass(frozen=True)
class Read:
    """XREAD BLOCK ``block_ms`` COUNT ``count`` STREAMS deltas ``after``."""

    block_ms: int
    count: int
    after: str


@dataclass(frozen=True)
class Done:
    """The stream ended cleanly: stop."""


@dataclass(frozen=True)
class Backoff:
    """Redis could not be reached: wait ``delay_s``, then go on from the cursor (a fresh probe
    first: a restarted server may have lost the request)."""

    delay_s: float


Action = Probe | Read | Done | Backoff
MAX_BACKOFF_S = 1.0


def check_after(after: object) -> str:
    if not isinstance(after, str) or not _ENTRY_ID_RE.match(after):
        raise ValidationError("after", f"must be a stream entry id such as '0' or '12-0', got {after!r}")
    return after


def check_timeout(timeout_s: object, name: str = "timeout_s") -> float | None:
    if timeout_s is None:
        return None
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s >= 0:
        raise ValidationError(name, f"must be a number of seconds >= 0 or None, got {timeout_s!r}")
    return float(timeout_s)


class ReaderCore:
    """State of one read of one request: cursor, expected seq, idle deadline, outcome."""

    def __init__(
        self,
        request_id: str,
        *,
        after: str = START,
        timeout_s: float | None = 30.0,
        queue_timeout_s: float | None = None,
    ) -> None:
        self.request_id = keys.check_request_id(request_id)
        self.after = check_after(after)
        self.timeout_s = check_timeout(timeout_s)
        self.queue_timeout_s = check_timeout(queue_timeout_s, "queue_timeout_s")
        self._queued = False  # the last probe found the request waiting for a worker
        self._queued_since: float | None = None  # when a probe first found it queued
        # From the start the first record must be seq 0; from a cursor, whatever comes first.
        self._expected_seq: int | None = 0 if after in (START, "0-0") else None
        self._deadline: float | None = None  # set on the first next_action: the shell's clock
        self._needs_probe = True  # before the first read
        self._idle = False  # the last read came back empty
        self._ended = False  # the record with usage was seen
        self._not_found = False
        self._pending: Exception | None = None  # raised by next_action once records are handed out
        self._down_since: float | None = None  # Redis unreachable since (the shell's clock)
        self._down_error: Exception | None = None
        self._retries = 0
        self._builder = ResultBuilder()

    # -- what to do next -------------------------------------------------------------------

    def next_action(self, now: float) -> Action:
        if self._pending is not None:
            raise self._pending
        if self._ended:
            return self._finish()
        if self._deadline is None:
            self._deadline = self._deadline_from(now)
        if self._down_error is not None:
            return self._backoff(now)
        if self._needs_probe:
            return Probe()
        if self._queued:
            self._while_queued(now)
        elif self._idle and self._deadline is not None and now >= self._deadline:
            raise StreamTimeout(self.request_id, self._timeout_message())
        return Read(block_ms=self._block_ms(now), count=READ_COUNT, after=self.after)

    def _while_queued(self, now: float) -> None:
        """Waiting for a worker is not silence: the idle deadline starts again when the
        request leaves the queue; only ``queue_timeout_s`` limits the wait."""
        if self._queued_since is None:
            self._queued_since = now
        self._deadline = self._deadline_from(now)
        limit = self._queue_deadline()
        if self._idle and limit is not None and now >= limit:
            raise StreamTimeout(self.request_id, self._queue_timeout_message(now))

    def _queue_deadline(self) -> float | None:
        if self.queue_timeout_s is None or self._queued_since is None:
            return None
        return self._queued_since + self.queue_timeout_s

    def on_connection_error(self, error: Exception, now: float) -> None:
        """The shell's I/O failed to reach Redis (dropped connection, restart): retry with
        backoff from the cursor; only ``timeout_s`` of failures in a row raise ``error``."""
        if self._down_since is None:
            self._down_since = now
        self._down_error = error

    def _backoff(self, now: float) -> Backoff:
        assert self._down_error is not None and self._down_since is not None
        if self.timeout_s is not None and now - self._down_since >= self.timeout_s:
            raise self._down_error
        self._down_error = None
        self._needs_probe = True
        self._retries += 1
        return Backoff(min(MAX_BACKOFF_S, 0.05 * 2**self._retries))

    def _reached(self) -> None:
        self._down_since, self._retries = None, 0

    def on_probe(
        self,
        last_entries: Sequence[tuple[Any, Mapping[Any, Any]]],
        meta_exists: bool,
        lease_exists: bool | None = None,
        status: str | bytes | None = None,
    ) -> None:
        """``last_entries``: the stream's last entry (empty when there is no stream);
        ``lease_exists``: whether a worker holds the request's lease key (None: not asked,
        the request is then never taken as queued); ``status``: the meta's status field."""
        self._reached()
        self._needs_probe = False
        self._queued = is_queued(last_entries, meta_exists, lease_exists, status)
        if not last_entries and not meta_exists:
            self._not_found = True
            self._pending = RequestNotFound(
                self.request_id, f"request {self.request_id} is unknown or has expired (no stream, no metadata)"
            )
            return
        if last_entries:
            self._check_ended_before_cursor(*last_entries[-1])

    def _check_ended_before_cursor(self, entry_id: Any, fields: Mapping[Any, Any]) -> None:
        """A reader that resumes at or past the final record has nothing left to wait for:
        without this it would wait for ``timeout_s`` and raise StreamTimeout."""
        last_id = _text(entry_id)
        if self.after in (START, "0-0") or _id_key(last_id) > _id_key(self.after):
            return
        record = decode(_field(fields, last_id), last_id)
        if record.is_last:
            self._ended = True
            if record.error is not None:
                self._pending = GenerationFailed(self.request_id, record.error.type, record.error.message)

    def on_reply(self, reply: Any, now: float) -> list[Record]:
        """Feed a raw XREAD reply (RESP2 list or RESP3 map, None when nothing came)."""
        return self.on_entries(entries_of(reply), now)

    def on_entries(self, entries: Sequence[tuple[Any, Mapping[Any, Any]]], now: float) -> list[Record]:
        """Feed ``(entry_id, fields)`` pairs; returns the valid records in order."""
        self._reached()
        if not entries:
            self._idle = True
            self._needs_probe = True  # an empty read may mean the keys expired meanwhile
            return []
        out: list[Record] = []
        try:
            for entry_id, fields in entries:
                out.append(self._accept(_text(entry_id), fields))
        except SchemaError as exc:
            self._pending = exc
        if out:
            self._idle = False
            self._deadline = self._deadline_from(now)
        return out

    # -- outcome ---------------------------------------------------------------------------

    @property
    def queued(self) -> bool:
        """The last probe found the request waiting for a worker."""
        return self._queued

    @property
    def ended(self) -> bool:
        """The last record (with usage) was read: the stream is complete."""
        return self._ended

    @property
    def should_cancel_on_exit(self) -> bool:
        """Leaving early asks the worker to stop, unless the stream is complete or unknown."""
        return not self._ended and not self._not_found

    def result(self) -> Result:
        """What was read so far (complete once `ended`)."""
        return self._builder.build()

    # -- internals -------------------------------------------------------------------------

    def _accept(self, entry_id: str, fields: Mapping[Any, Any]) -> Record:
        if self._ended:
            raise SchemaError(f"entry {entry_id} follows the last record (the one with usage)")
        record = decode(_field(fields, entry_id), entry_id)
        self._check_seq(record)
        if record.index >= MAX_N:
            raise SchemaError(f"entry {entry_id}: choice index {record.index} is beyond the maximum n={MAX_N}")
        self._expected_seq = record.seq + 1
        self.after = entry_id
        self._builder.add(record)
        self._ended = record.is_last
        return record

    def _check_seq(self, record: Record) -> None:
        expected = self._expected_seq
        if expected is not None and record.seq != expected:
            what = "repeated" if record.seq < expected else "skipped"
            raise SchemaError(
                f"request {self.request_id}: entry {record.entry_id} has seq {record.seq}, expected {expected} "
                f"(a record was {what})"
            )

    def _finish(self) -> Done:
        error = self._builder.error
        if error is not None:
            raise GenerationFailed(self.request_id, error.type, error.message, result=self.result())
        return Done()

    def _deadline_from(self, now: float) -> float | None:
        return None if self.timeout_s is None else now + self.timeout_s

    def _block_ms(self, now: float) -> int:
        deadline = self._queue_deadline() if self._queued else self._deadline
        if deadline is None:
            return MAX_BLOCK_MS
        # Never 0: BLOCK 0 means "forever" to Redis.
        remaining_ms = math.ceil((deadline - now) * 1000)
        return max(1, min(MAX_BLOCK_MS, remaining_ms))

    def _queue_timeout_message(self, now: float) -> str:
        waited = now - (self._queued_since or now)
        return (
            f"request {self.request_id} is still queued after {waited:.1f} s "
            f"(queue_timeout_s={self.queue_timeout_s:g}): no worker has started it"
        )

    def _timeout_message(self) -> str:
        return (
            f"no record for request {self.request_id} within {self.timeout_s:g} s "
            f"(waiting after entry {self.after}); the stream did not end"
        )


def is_queued(
    last_entries: Sequence[object], meta_exists: bool, lease_exists: bool | None, status: str | bytes | None
) -> bool:
    """Submitted, no record yet, and no worker has started it.  A meta status other than
    ``queued`` with no stream (a worker that died before its first record, say) is a running
    request's silence: its takeover is what the reader waits for, under ``timeout_s``."""
    if lease_exists is None or lease_exists or last_entries or not meta_exists:
        return False
    return status is None or _text(status) == "queued"


def entries_of(reply: Any) -> list[tuple[Any, Mapping[Any, Any]]]:
    """The entries of a one-stream XREAD reply, whatever its protocol shape:
    RESP2 ``[[key, [(id, fields), ...]]]``; RESP3 ``{key: [[(id, fields), ...]]}``."""
    if not reply:
        return []
    streams: Iterable[Any] = reply.values() if isinstance(reply, Mapping) else (item[1] for item in reply)
    out: list[tuple[Any, Mapping[Any, Any]]] = []
    for entries in streams:
        _flatten(entries, out)
    return out


def _flatten(items: Iterable[Any], out: list[tuple[Any, Mapping[Any, Any]]]) -> None:
    for item in items:
        if len(item) == 2 and isinstance(item[0], (bytes, str)) and isinstance(item[1], Mapping):
            out.append((item[0], item[1]))
        else:
            _flatten(item, out)  # RESP3 nests the entry list once more


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


_FIELD_BYTES = FIELD.encode()


def _field(fields: Mapping[Any, Any], entry_id: str) -> bytes:
    data = fields.get(_FIELD_BYTES)
    if data is None:
        data = fields.get(FIELD)
    if not isinstance(data, bytes):
        raise SchemaError(f"entry {entry_id} has no bytes field {FIELD!r} (fields: {sorted(map(_text, fields))})")
    return data
