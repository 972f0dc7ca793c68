"""Reading the request index (schemas/index.py): active requests and the live event feed.

``active``: the newest running and queued ids (two ZREVRANGEs), then each one's meta hash
(status, model, worker, tokens), pipelined: two round trips for any number of rows, and ids
whose meta says they ended meanwhile are left out.  ``events``: XREAD on the capped event
stream, from ``after`` (``"$"`` = only new ones, ``"0"`` = the whole retained window).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from consumer.core import entries_of
from schemas import keys
from schemas.index import TERMINAL
from schemas.redis_util import translate_redis_errors

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
    """Endless: yields events as they come (break out of the loop to stop)."""
    cursor = after if after != "$" else last_id(reader)
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
