"""The sink: one Redis round trip per engine step.

Every record of the step (XADD with its explicit id ``<seq+1>-0``), a TTL refresh for each
touched request, and the cancel-key check of every active request go out in one pipeline.
Records are never dropped: on a connection error the whole pipeline is sent again until
Redis answers.  A resent XADD that Redis refuses as "not above the last id" was written by
the first attempt; on a first attempt the same refusal means another worker owns the
stream (a redelivered task) and this worker must stop writing it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import hiredis
import redis

from schemas import keys
from schemas.records import FIELD, Record, decode, encode
from schemas.redis_util import describe_url

log = logging.getLogger(__name__)
Emission = tuple[str, Record]
T = TypeVar("T")


@dataclass
class PublishResult:
    cancelled: set[str] = field(default_factory=set)
    conflicts: set[str] = field(default_factory=set)  # streams owned by another worker


class StreamSink:
    def __init__(self, client: redis.Redis, ttl_s: int, url: str = "", max_backoff_s: float = 5.0) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.url = url
        self.max_backoff_s = max_backoff_s

    def publish(self, emissions: Sequence[Emission], watch: Iterable[str] = ()) -> PublishResult:
        watched = list(dict.fromkeys(watch))
        if not emissions and not watched:
            return PublishResult()
        return self._until_sent(lambda attempt: self._send(emissions, watched, retry=attempt > 0))

    def _until_sent(self, call: Callable[[int], T]) -> T:
        """Run ``call(attempt)`` until Redis answers: a worker waits out an outage rather than
        drop records or a request."""
        attempt = 0
        while True:
            try:
                return call(attempt)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                attempt += 1
                delay = min(self.max_backoff_s, 0.05 * 2**attempt)
                log.warning("Redis at %s unreachable (%s); retrying in %.2fs", describe_url(self.url), exc, delay)
                time.sleep(delay)

    def _send(self, emissions: Sequence[Emission], watched: list[str], retry: bool) -> PublishResult:
        commands: list[tuple[Any, ...]] = [
            ("XADD", keys.deltas_key(rid), keys.entry_id_for(record.seq), FIELD, encode(record))
            for rid, record in emissions
        ]
        touched = list(dict.fromkeys(rid for rid, _r in emissions))
        for rid in touched:
            commands.append(("EXPIRE", keys.deltas_key(rid), str(self.ttl_s)))
            commands.append(("EXPIRE", keys.meta_key(rid), str(self.ttl_s)))
        commands.extend(("EXISTS", keys.cancel_key(rid)) for rid in watched)
        replies = self._round_trip(commands)
        result = PublishResult()
        for (rid, _record), reply in zip(emissions, replies, strict=False):
            if isinstance(reply, redis.ResponseError):
                if not (retry and "equal or smaller" in str(reply)) and rid not in result.conflicts:
                    log.warning("stream of %s refused a record (%s): another worker owns it", rid, reply)
                    result.conflicts.add(rid)
            elif isinstance(reply, Exception):
                raise reply
        checks = replies[len(emissions) + 2 * len(touched) :]
        result.cancelled = {rid for rid, hit in zip(watched, checks, strict=True) if hit is True or hit == 1}
        return result

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[object]:
        """Send all commands in one write and read every reply: a pipeline without redis-py's
        per-command Python layers (they cost more than packing and parsing in hiredis: this
        doubles the records/s one core can publish).  Error replies come back as exceptions
        in the list, like ``pipeline.execute(raise_on_error=False)``."""
        pool = self.client.connection_pool
        conn = pool.get_connection()
        try:
            # One buffer, one sendall: a list would be written command by command.
            packed = b"".join([hiredis.pack_command(c) for c in commands])
            conn.send_packed_command([packed], check_health=False)
            replies: list[object] = []
            for _ in commands:
                try:
                    replies.append(conn.read_response())
                except redis.ResponseError as exc:
                    replies.append(exc)
            return replies
        except BaseException:
            conn.disconnect()  # a half-read reply stream cannot be reused
            raise
        finally:
            pool.release(conn)

    def read_records(self, request_id: str) -> tuple[list[Record], bool]:
        """Everything already in the request's stream, and whether it is being cancelled
        (one round trip; used when a task starts, to resume a redelivered request)."""
        def read(_attempt: int) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], int]:
            pipe = self.client.pipeline(transaction=False)
            pipe.xrange(keys.deltas_key(request_id))
            pipe.exists(keys.cancel_key(request_id))
            entries, cancelled = pipe.execute()
            return entries, cancelled

        entries, cancelled = self._until_sent(read)
        records = [decode(fields[FIELD.encode()], eid.decode()) for eid, fields in entries]
        return records, bool(cancelled)
