"""The live dashboard: ``GET /`` (plain HTML/JS/CSS from gateway/static/dashboard, no build
step) and the one SSE feed that drives it, ``GET /v1/dashboard/events``.

The feed sends a ``snapshot`` (workers, queued/running counts, the newest index events, active
requests, recent batches), then ``events`` (each XREAD of the index's capped stream, as one
message carrying a list) and once a second a ``tick`` (workers, counts, tokens/s, progress of
the recent batches).  One feed per open page, whatever the traffic: the page folds events by
request id and keeps a bounded window, so it stays responsive at 1,000 requests a minute.
Clicking a request opens ``GET /v1/dashboard/requests/{id}/stream`` (its text: replay, then
live); cancel buttons POST to ``/v1/dashboard/requests/{id}/cancel`` and
``/v1/batches/{id}/cancel``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse

from consumer import AsyncStreamReader, index
from consumer.batch import BatchProgress
from schemas import index as index_commands
from schemas import keys
from schemas.errors import TokenRelayError

STATIC = Path(__file__).parent / "static" / "dashboard"
FILES = {"app.js": "text/javascript", "style.css": "text/css"}
SNAPSHOT_EVENTS = 1000
BATCHES_SHOWN = 10
TICK_S = 1.0
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse(event: str, data: Any, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class BatchCache:
    """Progress of ended batches never changes: computed once, kept (bounded)."""

    def __init__(self, size: int = 256) -> None:
        self._done: OrderedDict[str, BatchProgress] = OrderedDict()
        self._size = size

    async def progress(self, reader: AsyncStreamReader, batch_id: str) -> BatchProgress | None:
        if batch_id in self._done:
            return self._done[batch_id]
        try:
            progress = await reader.batch(batch_id)
        except TokenRelayError:
            return None  # expired meanwhile
        if progress.complete:
            self._done[batch_id] = progress
            while len(self._done) > self._size:
                self._done.popitem(last=False)
        return progress

    async def recent(self, reader: AsyncStreamReader) -> list[dict[str, Any]]:
        ids = await index.recent_batches_async(reader, BATCHES_SHOWN)
        found = [await self.progress(reader, bid) for bid in ids]
        return [p.to_dict() for p in found if p is not None]


class Followed:
    """The requests a feed has seen queued or running (bounded).  Each tick reads their meta
    in one round trip and reports what changed, so rows move on to running and their end
    even where no worker writes index events; ended ones are also taken out of the index's
    queued/running sets (idempotent ZREMs), which keeps its counts honest."""

    def __init__(self, size: int = 500) -> None:
        self._ids: OrderedDict[str, str] = OrderedDict()  # id -> last status sent
        self._tokens: dict[str, int] = {}  # id -> last token count sent (same ids)
        self._size = size

    def see(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            rid, status = ev.get("id"), ev.get("s")
            if rid is None or status is None:
                continue
            if status in index_commands.TERMINAL:
                self._drop(rid)
                continue
            self._ids[rid] = "running" if status == "progress" else str(status)
            if "tokens" in ev:
                self._tokens[rid] = int(ev["tokens"] or 0)
            self._ids.move_to_end(rid)
            if len(self._ids) > self._size:
                self._drop(next(iter(self._ids)))

    def _drop(self, rid: str) -> None:
        self._ids.pop(rid, None)
        self._tokens.pop(rid, None)

    def _changed(self, rid: str, state: dict[str, Any]) -> bool:
        # Only news: a new status, or tokens moved since the last event this feed sent.
        return bool(state["s"] != self._ids[rid] or (state["tokens"] or 0) != self._tokens.get(rid, 0))

    async def changes(self, reader: AsyncStreamReader) -> list[dict[str, Any]]:
        if not self._ids:
            return []
        states = await index.states_async(reader, list(self._ids))
        out = [{**st, "t": time.time()} for rid, st in states.items() if self._changed(rid, st)]
        ended = [st["id"] for st in out if st["s"] in index_commands.TERMINAL]
        for rid in set(self._ids) - set(states):
            self._drop(rid)  # expired
        if ended:
            await forget(reader, ended)
        self.see(out)
        return out


async def forget(reader: AsyncStreamReader, request_ids: list[str]) -> None:
    async with reader._client.pipeline(transaction=False) as pipe:
        pipe.zrem(keys.INDEX_QUEUED_KEY, *request_ids)
        pipe.zrem(keys.INDEX_RUNNING_KEY, *request_ids)
        await pipe.execute()


RECONCILE = 200


async def reconcile(reader: AsyncStreamReader) -> None:
    """Keep the index's queued/running sets true to the requests' own meta whoever writes
    them: the oldest few members of each are checked every tick (ended or expired: removed;
    started: moved to running).  Idempotent, so any number of gateways may do it."""
    client = reader._client
    async with client.pipeline(transaction=False) as pipe:
        pipe.zrange(keys.INDEX_QUEUED_KEY, 0, RECONCILE - 1)
        pipe.zrange(keys.INDEX_RUNNING_KEY, 0, RECONCILE - 1)
        queued, running = await pipe.execute()
    ids = [index._text(m) for m in [*queued, *running]]
    if not ids:
        return
    states = await index.states_async(reader, ids)
    gone = [rid for rid in ids if rid not in states or states[rid]["s"] in index_commands.TERMINAL]
    started = [index._text(m) for m in queued if states.get(index._text(m), {}).get("s") == "running"]
    async with client.pipeline(transaction=False) as pipe:
        if gone:
            pipe.zrem(keys.INDEX_QUEUED_KEY, *gone)
            pipe.zrem(keys.INDEX_RUNNING_KEY, *gone)
        if started:
            pipe.zrem(keys.INDEX_QUEUED_KEY, *started)
            pipe.zadd(keys.INDEX_RUNNING_KEY, {rid: int(time.time() * 1000) for rid in started}, nx=True)
        await pipe.execute()


async def tick(reader: AsyncStreamReader, batches: BatchCache) -> dict[str, Any]:
    await reconcile(reader)
    workers = await index.workers_async(reader)
    return {
        "t": time.time(),
        "workers": [asdict(w) for w in workers],
        "tokens_per_s": sum(w.tokens_per_s for w in workers),
        "counts": await index.counts_async(reader),
        "batches": await batches.recent(reader),
    }


async def feed(reader: AsyncStreamReader, request: Request, batches: BatchCache) -> AsyncIterator[str]:
    recent = await index.recent_events_async(reader, SNAPSHOT_EVENTS)
    cursor = recent[-1].entry_id if recent else await index.last_id_async(reader)
    active = [asdict(a) for a in await index.active_async(reader, 200)]
    snapshot = {**await tick(reader, batches), "events": [e.data for e in recent], "active": active}
    yield sse("snapshot", snapshot)
    followed = Followed()
    followed.see([e.data for e in recent] + [{"id": a["request_id"], "s": a["status"]} for a in active])
    next_tick = time.monotonic() + TICK_S
    while not await request.is_disconnected():
        events, cursor = await index.read_events_async(reader, cursor, block_ms=int(TICK_S * 500))
        if events:
            followed.see([e.data for e in events])
            yield sse("events", [e.data for e in events], cursor)
        if time.monotonic() >= next_tick:
            next_tick = time.monotonic() + TICK_S
            changes = await followed.changes(reader)
            if changes:
                yield sse("events", changes)
            yield sse("tick", await tick(reader, batches))


async def text_stream(reader: AsyncStreamReader, request_id: str, after: str) -> AsyncIterator[str]:
    try:
        async for record in reader.stream(request_id, after=after, timeout_s=None):
            usage = asdict(record.usage) if record.usage is not None else None
            error = asdict(record.error) if record.error is not None else None
            data = {"index": record.index, "text": record.text, "finish_reason": record.finish_reason}
            yield sse("record", {**data, "usage": usage, "error": error}, record.entry_id)
    except TokenRelayError as exc:
        yield sse("failure", {"message": str(exc)})
    yield sse("end", {})


def router(reader: Callable[[], AsyncStreamReader]) -> APIRouter:
    api = APIRouter()
    batches = BatchCache()

    @api.get("/", response_model=None)
    async def page() -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @api.get("/dashboard/{name}", response_model=None)
    async def static(name: str) -> Response:
        if name not in FILES:
            return JSONResponse({"error": {"message": f"no file {name}", "type": "not_found"}}, 404)
        return FileResponse(STATIC / name, media_type=FILES[name])

    @api.get("/v1/dashboard/events", response_model=None)
    async def events(request: Request) -> Response:
        return StreamingResponse(feed(reader(), request, batches), media_type="text/event-stream", headers=SSE_HEADERS)

    @api.get("/v1/dashboard/requests/{request_id}/stream", response_model=None)
    async def stream(request_id: str, request: Request, after: str = "0") -> Response:
        after = request.headers.get("last-event-id", after)
        body = text_stream(reader(), request_id, after)
        return StreamingResponse(body, media_type="text/event-stream", headers=SSE_HEADERS)

    @api.post("/v1/dashboard/requests/{request_id}/cancel", response_model=None)
    async def cancel(request_id: str) -> Response:
        client = reader()
        await client.cancel(request_id)
        await asyncio.gather(
            *(client._client.execute_command(*c) for c in index_commands.on_cancel_requested(request_id))
        )
        return JSONResponse({"id": request_id, "status": "cancelling"})

    return api
