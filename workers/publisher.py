"""The sink: the worker's Redis I/O, planned by `workers.lifecycle` and fenced by leases.

One round trip per engine step: one publish script per held request (its records, lease
renewal, TTLs and cancel check; see workers/lease.py) plus one ZADD of the lease index (for
finished requests too: `sweep` drops them once it has seen that their end survived) and the
request index's commands (workers/index_book.py).  On a Redis Cluster the trip is one
redis-py cluster pipeline: one batch per node, written to every node before any reply is read.
Nothing is dropped on a connection error: the same round trip is sent again until Redis
answers (the scripts make a resend idempotent).  A script the server does not know
(NOSCRIPT, e.g. after a restart) is loaded and the round trip sent again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Container, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import hiredis
import redis
import redis.cluster

from schemas import keys
from schemas.errors import SchemaError
from schemas.job import Job
from schemas.records import FIELD, Record, decode
from schemas.redis_util import CLUSTER_TRANSIENT, OUTAGE_ERRORS, SyncClient, describe_url, is_outage
from schemas.workers import HEARTBEAT_TTL_S, WorkerInfo
from workers.index_book import IndexBook
from workers.lease import SCRIPTS
from workers.lifecycle import ClaimReply, PublishCall, StepOutcome, WriteBook, triage_due

log = logging.getLogger(__name__)
Emission = tuple[str, Record]
T = TypeVar("T")
_SHA = {name: hashlib.sha1(text.encode()).hexdigest() for name, text in SCRIPTS.items()}

_TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    *CLUSTER_TRANSIENT,  # TRYAGAIN, CLUSTERDOWN / MASTERDOWN, a MOVED left over mid-failover
)


@dataclass(frozen=True)
class StreamState:
    """What a request's stream holds when a worker starts it."""

    records: list[Record] | SchemaError
    last_id: str  # "0-0" when empty
    cancelled: bool


class StreamSink:
    def __init__(
        self,
        client: SyncClient,
        ttl_s: int = 3600,
        url: str = "",
        max_backoff_s: float = 5.0,
        *,
        worker_id: str = "worker",
        lease_s: float = 5.0,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s  # for requests whose job gives none (refused payloads)
        self.url = url
        self.max_backoff_s = max_backoff_s
        self.worker_id = worker_id
        self.book = WriteBook(lease_s)
        self.index = IndexBook(worker_id)

    # -- starting a request ------------------------------------------------------------------

    def claim(self, request_id: str, ttl_s: int, job: dict[str, Any] | None = None) -> ClaimReply:
        """Take the request's lease if nobody holds it and its stream has not ended (see
        `claim_and_read`)."""
        return self.claim_and_read(request_id, ttl_s, job)[0]

    def claim_and_read(
        self, request_id: str, ttl_s: int, job: dict[str, Any] | None = None
    ) -> tuple[ClaimReply, StreamState]:
        """Take the request's lease if nobody holds it and its stream has not ended, and read
        what the stream holds, in one round trip (a fresh request reaches the engine one trip
        sooner): Redis runs a connection's commands in order, so the read sees the stream as
        the claim left it, and a holder of the lease is the only writer after that.

        The request enters the lease index in the same round trip: a worker that dies between
        its claim and its first step's publish (which renews the index) must not leave a
        request that no scan can find.  Whatever the claim answers, the entry is harmless: an
        ended request's entry is dropped by the next scan, a held one is its holder's."""
        args = (self.worker_id, str(self.book.lease_ms), str(ttl_s), json.dumps(job) if job else "")
        deltas = keys.deltas_key(request_id)
        keys3 = (deltas, keys.lease_key(request_id), keys.meta_key(request_id))

        def trip(_attempt: int) -> list[object]:
            index = ("ZADD", keys.LEASES_KEY, str(int(time.time() * 1000) + self.book.lease_ms), request_id)
            read = [("XRANGE", deltas, "-", "+"), ("EXISTS", keys.cancel_key(request_id))]
            return self._script_round_trip([("claim", keys3, args)], [index, *read])

        reply, _indexed, entries, cancelled = self._until_sent(trip)
        for answer in (reply, entries, cancelled):
            if isinstance(answer, Exception):
                raise answer
        return ClaimReply.parse(reply), _stream_state(entries, cancelled)  # type: ignore[arg-type]

    def read_stream(self, request_id: str) -> StreamState:
        """Everything already in the request's stream, and whether it is being cancelled."""

        def read(_attempt: int) -> tuple[list[tuple[bytes, dict[bytes, bytes]]], int]:
            pipe = self.client.pipeline(transaction=False)
            pipe.xrange(keys.deltas_key(request_id))
            pipe.exists(keys.cancel_key(request_id))
            entries, cancelled = pipe.execute()
            return entries, cancelled

        return _stream_state(*self._until_sent(read))

    def hold(
        self, request_id: str, owner: str, last_id: str, ttl_s: int, tokens: int = 0, job: Job | None = None
    ) -> None:
        self.book.hold(request_id, owner, last_id, ttl_s, tokens)
        attempt = owner.rpartition("/")[2]
        self.index.track(
            request_id,
            model=job.model if job is not None else None,
            batch_id=_batch_of(job),
            attempt=int(attempt) if attempt.isdigit() else 1,
            submitted_at=job.submitted_at if job is not None else None,
            tokens=tokens,
        )

    # -- every step --------------------------------------------------------------------------

    def publish(self, emissions: Sequence[Emission], watch: Iterable[str] = ()) -> StepOutcome:
        """Write the step's records of held requests, renew their leases, check their cancel
        keys: one round trip (sent again until Redis answers)."""
        calls = self.book.plan(emissions, watch)
        if not calls:
            return StepOutcome()
        index = self.book.index_entries(calls)
        now = time.time()
        announce = self.index.take_pending() + self.index.on_step(calls, now)
        replies = self._until_sent(lambda _a: self._step_round_trip(calls, index, announce))
        outcome = self.book.on_replies(calls, replies)
        self.index.on_outcome(calls, outcome, now)
        return outcome

    def flush_index(self) -> None:
        """Send the request-index commands still waiting for a round trip (the engine went
        idle after the step that ended its last requests)."""
        pending = self.index.take_pending()
        if pending:
            self._until_sent(lambda _a: self._round_trip(list(pending)))

    def _step_round_trip(
        self,
        calls: Sequence[PublishCall],
        index: list[tuple[str, str]],
        announce: Sequence[tuple[str, ...]] = (),
    ) -> list[object]:
        extra: list[tuple[Any, ...]] = [*announce]
        if index:  # finished requests too: the scan drops them once it sees their end survived
            extra.append(("ZADD", keys.LEASES_KEY, *[x for pair in index for x in pair]))
        scripted = [("publish", c.keys, c.args) for c in calls]
        replies = self._script_round_trip(scripted, extra)
        transient = next((r for r in replies if isinstance(r, _TRANSIENT)), None)
        if transient is not None:
            # Out of memory, a read-only replica, a script busy: the server may recover, and
            # the records must not be lost: wait and send the step again (idempotent).
            raise redis.ConnectionError(f"server refused the step for now: {transient}")
        return replies[: len(calls)]

    # -- hand-off and takeover ---------------------------------------------------------------

    def release(self, request_ids: Iterable[str]) -> None:
        """Give leases up at once (warm shutdown): a live worker takes them over at its next
        scan instead of waiting for them to expire."""
        held = [self.book.held[rid] for rid in request_ids if rid in self.book.held]
        if not held:
            return
        scripted = [("release", (keys.lease_key(h.request_id),), (h.owner,)) for h in held]
        extra: list[tuple[Any, ...]] = [("ZADD", keys.LEASES_KEY, *[x for h in held for x in ("0", h.request_id)])]
        self._until_sent(lambda _a: self._script_round_trip(scripted, extra))
        self.book.forget(h.request_id for h in held)
        self.index.forget(h.request_id for h in held)  # the next holder announces it again

    def expired(self, limit: int) -> list[str]:
        """Requests whose lease expired (or was given up), oldest first."""
        now_ms = int(time.time() * 1000)
        ids = self._until_sent(
            lambda _a: self.client.zrangebyscore(keys.LEASES_KEY, "-inf", now_ms, start=0, num=limit)
        )
        return [i.decode() if isinstance(i, bytes) else str(i) for i in ids]

    def sweep(self, limit: int, held: Container[str]) -> list[str]:
        """Look at the lease index's due entries (oldest first, at most ``limit``): drop those
        whose stream ended, return the others (expired leases to take over) except ``held``.
        Two round trips more when anything is due: the ``ENDED`` checks (one pipeline), then
        one ZREM."""
        due = self.expired(limit)
        if not due:
            return []
        scripted = [("ended", (keys.deltas_key(rid), keys.meta_key(rid)), ()) for rid in due]
        replies = self._until_sent(lambda _a: self._script_round_trip(scripted))
        verdict = triage_due(due, replies, held)
        self.unindex(verdict.prune)
        return verdict.orphans

    def job_of(self, request_id: str) -> dict[str, Any] | None:
        """The job a producer stored in the request's meta (None once it has expired)."""
        raw = self._until_sent(lambda _a: self.client.hget(keys.meta_key(request_id), "job"))
        if raw is None:
            return None
        try:
            job = json.loads(raw)
        except ValueError:
            return None
        return job if isinstance(job, dict) else None

    def unindex(self, request_ids: Iterable[str]) -> None:
        ids = list(request_ids)
        if ids:
            self._until_sent(lambda _a: self.client.zrem(keys.LEASES_KEY, *ids))

    def heartbeat(self, info: WorkerInfo) -> None:
        """One beat (one round trip); a failure is only logged: the next beat retries."""
        key = keys.worker_key(info.worker_id)
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(key, mapping=info.to_mapping())  # type: ignore[arg-type]
            pipe.expire(key, HEARTBEAT_TTL_S)
            pipe.zadd(keys.WORKERS_KEY, {info.worker_id: int(info.heartbeat_at * 1000)})
            # Members whose beats stopped long ago (their hashes are gone): keep the index small.
            pipe.zremrangebyscore(keys.WORKERS_KEY, "-inf", int((info.heartbeat_at - 3600) * 1000))
            pipe.execute()
        except OUTAGE_ERRORS as exc:
            if not is_outage(exc):
                raise
            log.debug("heartbeat not written: %s", exc)

    def forget_worker(self, worker_id: str) -> None:
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(keys.worker_key(worker_id))
            pipe.zrem(keys.WORKERS_KEY, worker_id)
            pipe.execute()
        except OUTAGE_ERRORS as exc:
            if not is_outage(exc):
                raise

    # -- plumbing ----------------------------------------------------------------------------

    def _until_sent(self, call: Callable[[int], T]) -> T:
        """Run ``call(attempt)`` until Redis answers: a worker waits out an outage rather than
        drop records or a request."""
        attempt = 0
        while True:
            try:
                return call(attempt)
            except OUTAGE_ERRORS as exc:  # Redis away, or a cluster failing over
                if not is_outage(exc):
                    raise
                attempt += 1
                delay = min(self.max_backoff_s, 0.05 * 2**attempt)
                log.warning("Redis at %s unreachable (%s); retrying in %.2fs", describe_url(self.url), exc, delay)
                time.sleep(delay)

    def _script_round_trip(
        self,
        scripted: Sequence[tuple[str, Sequence[str], Sequence[bytes | str]]],
        extra: Sequence[tuple[Any, ...]] = (),
    ) -> list[object]:
        commands: list[tuple[Any, ...]] = [
            ("EVALSHA", _SHA[name], str(len(ks)), *ks, *args) for name, ks, args in scripted
        ]
        commands.extend(extra)
        replies = self._round_trip(commands)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
            # A fresh or restarted server (or a replica just promoted: scripts are not
            # replicated): load every script, send the whole trip again (the scripts that did
            # run the first time answer the same on a resend).
            self._load_scripts()
            replies = self._round_trip(commands)
        return replies

    def _load_scripts(self) -> None:
        if isinstance(self.client, redis.cluster.RedisCluster):
            for text in SCRIPTS.values():
                self.client.script_load(text)  # redis-py sends it to every master
        else:
            self._round_trip([("SCRIPT", "LOAD", text) for text in SCRIPTS.values()])

    def _round_trip(self, commands: list[tuple[Any, ...]]) -> list[object]:
        """Send all commands and read every reply; error replies come back as exceptions in
        the list.  On a cluster, redis-py's cluster pipeline: it groups the commands by the
        node of their slot, writes to every node before reading any reply (one round trip
        of latency, one batch per node) and follows MOVED/ASK.  Standalone: the fast path."""
        if isinstance(self.client, redis.cluster.RedisCluster):
            return self._cluster_round_trip(self.client, commands)
        return self._packed_round_trip(self.client, commands)

    @staticmethod
    def _cluster_round_trip(client: redis.cluster.RedisCluster, commands: list[tuple[Any, ...]]) -> list[object]:
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        replies: list[object] = pipe.execute(raise_on_error=False)
        # With raise_on_error=False, redis-py also puts a node's connection error (after its own
        # retries) in the list.  Raised instead, so that the whole trip is sent again once the
        # node (or its promoted replica) answers: a publish must never read as refused for good.
        outage = next((r for r in replies if isinstance(r, BaseException) and is_outage(r)), None)
        if outage is not None:
            raise outage
        return replies

    @staticmethod
    def _packed_round_trip(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[object]:
        """One write and one read of a standalone server's connection: a pipeline without
        redis-py's per-command Python layers (they cost more than packing and parsing in
        hiredis)."""
        pool = client.connection_pool
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


def _batch_of(job: Job | None) -> str | None:
    batch = job.extra.get("batch") if job is not None else None
    return batch if isinstance(batch, str) else None


def _stream_state(entries: Sequence[Any], cancelled: object) -> StreamState:
    """A stream's entries (redis-py's ``(id, {field: value})`` or the raw ``[id, [field,
    value, ...]]`` of a packed round trip) and its cancel key's EXISTS, as a `StreamState`."""
    pairs = [
        (eid, fields if isinstance(fields, dict) else dict(zip(fields[::2], fields[1::2], strict=True)))
        for eid, fields in entries
    ]
    last_id = pairs[-1][0].decode() if pairs else "0-0"
    try:
        records: list[Record] | SchemaError = [
            decode(fields.get(FIELD.encode(), b""), eid.decode()) for eid, fields in pairs
        ]
    except SchemaError as exc:
        records = exc
    return StreamState(records, last_id, bool(cancelled))
