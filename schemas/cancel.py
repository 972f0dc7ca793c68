"""Cancel: the one spelling shared by `Producer.cancel`, `StreamReader.cancel`,
`AsyncStreamReader.cancel` and batch cancels.  Pure: the Lua script's text, its keys and
arguments, the records it writes, and the parsing of its reply; the shells run it with
redis-py's ``register_script`` (EVALSHA, sync or async).

One script, atomic on the request's slot (all its keys share the hash tag):

- neither meta nor stream exists: ``unknown`` (the caller raises ``RequestNotFound``, and no
  cancel key is left behind);
- the stream already ended (meta ``status`` final, or the last record carries ``usage``):
  ``ended``, nothing written;
- otherwise the cancel key is SET with the request's TTL (the meta's ``ttl_s``), and
- if the request is still queued (no stream yet and no worker's lease key), the canceller
  ends it itself: one ``cancelled`` record per choice (seq 0..n-1, entry ids ``1-0``...),
  meta ``status`` = ``cancelled``: ``cancelled``.  A worker that claims the request later
  finds it ended and only acknowledges its task; a worker that claimed it first holds the
  lease, so the script leaves the stream to it (``signalled``).  The explicit entry ids fence
  both ways: the worker's first write expects an empty stream.
- else ``signalled``: the worker sees the key at its next step and ends the stream.

Writing records needs ``n`` and ``submitted_at`` from the meta, which the client does not
know: a first call with no records answers ``records`` (with both) when the request turns
out to be queued, and the client calls again with the records it built.  A cancel of a
running request (the common case: a reader leaving early) costs one round trip.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from schemas import index, keys
from schemas.config import MAX_N
from schemas.errors import RequestNotFound
from schemas.records import Record, Usage, encode

MAX_CALLS = 3  # a meta whose n changes between calls (it never does) must not loop forever

# KEYS: meta, deltas, lease, cancel.
# ARGV: ttl (when the meta has no ttl_s), then entry id / record pairs (none on a first call).
# Returns {'unknown'} | {'ended', status} | {'records', n, submitted_at} | {'cancelled'} | {'signalled'}.
SCRIPT = """
local has_meta = redis.call('EXISTS', KEYS[1]) == 1
local has_stream = redis.call('EXISTS', KEYS[2]) == 1
if not has_meta and not has_stream then return {'unknown'} end
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'finished' or status == 'cancelled' or status == 'failed' then return {'ended', status} end
if has_stream then
  local top = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
  if #top > 0 then
    local f = top[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'r' then
        local ok, rec = pcall(cmsgpack.unpack, f[i + 1])
        if ok and type(rec) == 'table' and type(rec['usage']) == 'table' then return {'ended', 'finished'} end
      end
    end
  end
end
local ttl = tonumber(redis.call('HGET', KEYS[1], 'ttl_s')) or tonumber(ARGV[1])
redis.call('SET', KEYS[4], '1', 'EX', ttl)
if has_stream or redis.call('EXISTS', KEYS[3]) == 1 then return {'signalled'} end
local n = tonumber(redis.call('HGET', KEYS[1], 'n')) or 1
if #ARGV - 1 ~= 2 * n then
  return {'records', tostring(n), redis.call('HGET', KEYS[1], 'submitted_at') or ''}
end
for i = 2, #ARGV, 2 do redis.call('XADD', KEYS[2], ARGV[i], 'r', ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'status', 'cancelled')
redis.call('EXPIRE', KEYS[2], ttl)
redis.call('EXPIRE', KEYS[1], ttl)
return {'cancelled'}
"""


class CancelOutcome(str, enum.Enum):
    """What a cancel did; ``unknown`` never reaches a caller (it raises RequestNotFound)."""

    UNKNOWN = "unknown"  # no such request (never submitted, or its keys expired)
    ENDED = "ended"  # it had already ended: nothing to do
    CANCELLED = "cancelled"  # it was queued: the canceller wrote its final records itself
    SIGNALLED = "signalled"  # it is running: its worker stops at its next step


@dataclass(frozen=True)
class NeedRecords:
    """The script's first answer for a queued request: call again with `cancelled_records`."""

    n: int
    submitted_at: float | None


def script_keys(request_id: str) -> list[str]:
    rid = keys.check_request_id(request_id)
    return [keys.meta_key(rid), keys.deltas_key(rid), keys.lease_key(rid), keys.cancel_key(rid)]


def script_args(ttl_s: int, records: Sequence[tuple[str, bytes]] = ()) -> list[str | bytes | int]:
    args: list[str | bytes | int] = [ttl_s]
    for entry_id, data in records:
        args += [entry_id, data]
    return args


def parse_reply(reply: Sequence[object]) -> CancelOutcome | NeedRecords:
    kind = _text(reply[0])
    if kind == "records":
        n = int(_text(reply[1]))
        submitted = _text(reply[2])
        return NeedRecords(n, _float_or_none(submitted))
    return CancelOutcome(kind)


def cancelled_records(n: int, queue_s: float) -> list[tuple[str, bytes]]:
    """The final records of a request cancelled before any worker started it: one per choice,
    ``finish_reason`` cancelled, no text or tokens, usage (all zero but the time spent
    queued, which is also the whole request's time) on the last."""
    usage = Usage(queue_s=queue_s, e2e_s=queue_s)
    out = []
    for seq in range(n):
        record = Record(seq=seq, index=seq, finish_reason="cancelled", usage=usage if seq == n - 1 else None)
        out.append((keys.entry_id_for(seq), encode(record)))
    return out


def records_for(need: NeedRecords, now: float) -> list[tuple[str, bytes]]:
    queue_s = 0.0 if need.submitted_at is None else max(0.0, now - need.submitted_at)
    # A meta n out of range (never written so) gets records the script will not accept.
    return cancelled_records(max(1, min(need.n, MAX_N)), queue_s)


class CancelCall:
    """One cancel, sans-IO.  A shell runs::

        call = CancelCall(request_id, ttl_s)
        while (outcome := call.on_reply(script(keys=call.keys, args=call.args), time.time())) is None:
            pass
        run call.index_commands()   # the request index (only when the canceller ended it)

    ``on_reply`` raises RequestNotFound for an unknown or expired request."""

    def __init__(self, request_id: str, ttl_s: int) -> None:
        self.request_id = keys.check_request_id(request_id)
        self.keys = script_keys(request_id)
        self.ttl_s = ttl_s
        self.args = script_args(ttl_s)
        self.outcome: CancelOutcome | None = None
        self._calls = 0
        self._queue_s = 0.0

    def on_reply(self, reply: Sequence[object], now: float) -> CancelOutcome | None:
        """The script's reply; the outcome, or None: call the script again with ``args``."""
        self._calls += 1
        parsed = parse_reply(reply)
        if isinstance(parsed, NeedRecords):
            if self._calls >= MAX_CALLS:
                parsed = CancelOutcome.SIGNALLED  # the cancel key is set: the worker will see it
            else:
                records = records_for(parsed, now)
                self._queue_s = 0.0 if parsed.submitted_at is None else max(0.0, now - parsed.submitted_at)
                self.args = script_args(self.ttl_s, records)
                return None
        if parsed is CancelOutcome.UNKNOWN:
            raise RequestNotFound(self.request_id, not_found_message(self.request_id))
        self.outcome = parsed
        return parsed

    def index_commands(self, now: float | None = None) -> list[index.Command]:
        """The request index's update: a request the canceller ended leaves the queued set
        (a worker would have done it, but no worker ever sees this request)."""
        if self.outcome is not CancelOutcome.CANCELLED:
            return []
        usage = {"queue_s": self._queue_s, "e2e_s": self._queue_s, "prompt_tokens": 0, "completion_tokens": 0}
        return index.on_finished(self.request_id, "cancelled", usage, None, "cancelled", 0, now=now)


def not_found_message(request_id: str) -> str:
    return f"request {request_id} is unknown or has expired: nothing to cancel"


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None
