"""Reading the request index (schemas/index.py): active requests and the live event feed.

``active``: the newest running and queued ids (two ZREVRANGEs), then each one's meta hash
(status, model, worker, tokens), pipelined: two round trips for any number of rows, and ids
whose meta says they ended meanwhile are left out.  ``events``: XREAD on the capped event
stream, from ``after`` (``"$"`` = only new ones, ``"0"`` = the whole retained window).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumer.core import entries_of
from schemas import keys
from schemas.index import TERMINAL
from schemas.redis_util import translate_redis_errors
from schemas.workers import HEARTBEAT_TTL_S, WorkerInfo

if TYPE_CHECKING:
    from consumer.aio import AsyncStreamReader
    from consumer.sync import StreamReader

ACTIVE_FIELDS = ("status", "model", "worker", "tokens", "submitted_at")
BLOCK_MS = 1000


@dataclass(frozen=True)
class ActiveRequest:
    request_id: str
    status: str  # queued or running
    since: float  # unix s it was queued, or of its start / last progress
    model: str | None
    worker: str | None
    tokens: int


@dataclass(frozen=True)
class IndexEvent:
    """One state change: ``data`` has ``id`` (or ``batch``), ``s`` (the status) and ``t``."""

    entry_id: str
    data: dict[str, Any]

    @property
    def request_id(self) -> str | None:
        return self.data.get("id")

    @property
    def status(self) -> str:
        return str(self.data.get("s", ""))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entries(entries: Sequence[Any]) -> list[IndexEvent]:
    out = []
    for entry_id, fields in entries:
        raw = fields.get(b"e", fields.get("e"))
        if raw is not None:
            out.append(IndexEvent(_text(entry_id), json.loads(raw)))
    return out


def _ids(ranges: Sequence[Sequence[tuple[Any, float]]], limit: int) -> list[tuple[str, str, float]]:
    running, queued = ranges
    rows = [(_text(m), "running", s / 1000) for m, s in running] + [(_text(m), "queued", s / 1000) for m, s in queued]
    return rows[:limit]


def _rows(ids: list[tuple[str, str, float]], metas: Sequence[Sequence[Any]]) -> list[ActiveRequest]:
    out = []
    for (rid, indexed, since), (status, model, worker, tokens, submitted) in zip(ids, metas, strict=True):
        if submitted is None and status is None:
            continue  # expired or never registered
        actual = _text(status) if status is not None else indexed
        if actual in TERMINAL:
            continue
        out.append(
            ActiveRequest(rid, actual, since, _text(model) if model else None, _text(worker) if worker else None,
                          int(tokens or 0))
        )  # fmt: skip
    return out


def active(reader: StreamReader, limit: int = 100) -> list[ActiveRequest]:
    with translate_redis_errors(reader.label), reader._client.pipeline(transaction=False) as pipe:
        pipe.zrevrange(keys.INDEX_RUNNING_KEY, 0, limit - 1, withscores=True)
        pipe.zrevrange(keys.INDEX_QUEUED_KEY, 0, limit - 1, withscores=True)
        ids = _ids(pipe.execute(), limit)
        for rid, _, _ in ids:
            pipe.hmget(keys.meta_key(rid), *ACTIVE_FIELDS)
        return _rows(ids, pipe.execute())


def events(reader: StreamReader, after: str = "$", count: int = 500) -> Iterator[IndexEvent]:
    """Endless: yields events as they come (break out of the loop to stop).  ``"$"`` means
    "after the newest event at this call", not at the first ``next``."""
    return _follow(reader, after if after != "$" else last_id(reader), count)


def _follow(reader: StreamReader, cursor: str, count: int) -> Iterator[IndexEvent]:
    while True:
        with translate_redis_errors(reader.label):
            reply = reader._client.xread({keys.INDEX_EVENTS_KEY: cursor}, count=count, block=BLOCK_MS)
        entries = entries_of(reply)  # RESP2 or RESP3 shape
        yield from parse_entries(entries)
        cursor = _text(entries[-1][0]) if entries else cursor


def last_id(reader: StreamReader) -> str:
    """ "$" resolved once, so that a reconnect does not skip what came in between."""
    with translate_redis_errors(reader.label):
        top = reader._client.xrevrange(keys.INDEX_EVENTS_KEY, count=1)
    return _text(top[0][0]) if top else "0-0"


def recent_events(reader: StreamReader, count: int = 500) -> list[IndexEvent]:
    """The newest ``count`` events, oldest first (a live view's starting window)."""
    with translate_redis_errors(reader.label):
        entries = reader._client.xrevrange(keys.INDEX_EVENTS_KEY, count=count)
    return parse_entries(list(reversed(entries or [])))


# -- asyncio ---------------------------------------------------------------------------------


async def active_async(reader: AsyncStreamReader, limit: int = 100) -> list[ActiveRequest]:
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            pipe.zrevrange(keys.INDEX_RUNNING_KEY, 0, limit - 1, withscores=True)
            pipe.zrevrange(keys.INDEX_QUEUED_KEY, 0, limit - 1, withscores=True)
            ids = _ids(await pipe.execute(), limit)
            for rid, _, _ in ids:
                pipe.hmget(keys.meta_key(rid), *ACTIVE_FIELDS)
            return _rows(ids, await pipe.execute())


async def events_async(reader: AsyncStreamReader, after: str = "$", count: int = 500) -> AsyncIterator[IndexEvent]:
    cursor = after if after != "$" else await last_id_async(reader)
    while True:
        with translate_redis_errors(reader.label):
            reply = await reader._client.xread({keys.INDEX_EVENTS_KEY: cursor}, count=count, block=BLOCK_MS)
        entries = entries_of(reply)
        for ev in parse_entries(entries):
            yield ev
        cursor = _text(entries[-1][0]) if entries else cursor


async def last_id_async(reader: AsyncStreamReader) -> str:
    with translate_redis_errors(reader.label):
        top = await reader._client.xrevrange(keys.INDEX_EVENTS_KEY, count=1)
    return _text(top[0][0]) if top else "0-0"


async def recent_events_async(reader: AsyncStreamReader, count: int = 500) -> list[IndexEvent]:
    with translate_redis_errors(reader.label):
        entries = await reader._client.xrevrange(keys.INDEX_EVENTS_KEY, count=count)
    return parse_entries(list(reversed(entries or [])))


async def workers_async(reader: AsyncStreamReader, max_age_s: float = HEARTBEAT_TTL_S) -> list[WorkerInfo]:
    """Live workers from their heartbeats (schemas/workers.py), in id order."""
    with translate_redis_errors(reader.label):
        since = (time.time() - max_age_s) * 1000
        ids = await reader._client.zrangebyscore(keys.WORKERS_KEY, since, "+inf")
        async with reader._client.pipeline(transaction=False) as pipe:
            for wid in ids:
                pipe.hgetall(keys.worker_key(_text(wid)))
            raws = await pipe.execute()
    return sorted((WorkerInfo.from_mapping(raw) for raw in raws if raw), key=lambda w: w.worker_id)


async def counts_async(reader: AsyncStreamReader) -> dict[str, int]:
    """How many requests are queued and running (the index's sorted sets)."""
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            pipe.zcard(keys.INDEX_QUEUED_KEY)
            pipe.zcard(keys.INDEX_RUNNING_KEY)
            queued, running = await pipe.execute()
    return {"queued": int(queued), "running": int(running)}


async def recent_batches_async(reader: AsyncStreamReader, limit: int = 10) -> list[str]:
    with translate_redis_errors(reader.label):
        ids = await reader._client.zrevrange(keys.BATCHES_KEY, 0, limit - 1)
    return [_text(b) for b in ids]


async def read_events_async(
    reader: AsyncStreamReader, cursor: str, block_ms: int = BLOCK_MS
) -> tuple[list[IndexEvent], str]:
    """One XREAD of the feed after ``cursor``: the events and the new cursor."""
    with translate_redis_errors(reader.label):
        reply = await reader._client.xread({keys.INDEX_EVENTS_KEY: cursor}, count=500, block=block_ms)
    entries = entries_of(reply)
    return parse_entries(entries), (_text(entries[-1][0]) if entries else cursor)


async def states_async(reader: AsyncStreamReader, request_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each request's meta (status, model, worker, tokens) as index-event fields; one round
    trip.  Ids whose keys are gone are left out.  Live views use it to follow requests
    whatever the workers write to the index."""
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                pipe.hmget(keys.meta_key(rid), *ACTIVE_FIELDS)
            replies = await pipe.execute()
    out: dict[str, dict[str, Any]] = {}
    for rid, (status, model, worker, tokens, submitted) in zip(request_ids, replies, strict=True):
        if status is None and submitted is None:
            continue
        state = {"id": rid, "s": _text(status) if status else "queued", "tokens": int(tokens or 0)}
        out[rid] = {**state, "model": _text(model) if model else None, "worker": _text(worker) if worker else None}
    return out
