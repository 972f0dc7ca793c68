"""Server-Sent Events: framing, keep-alive, and cancel-on-disconnect.

Every event carries ``id: <stream entry id>`` of the record it came from, so a client that
lost its connection resumes with ``Last-Event-ID`` (browsers' EventSource sends it by itself)
and gets exactly the events it missed.  A comment line every ``keepalive_s`` of silence keeps
proxies from closing an idle stream (a queued request, a slow model).

Keep-alive needs a timeout on "the next record" without cancelling the reader's read in the
middle of a Redis round trip, so the records are pumped by a task into a queue and the
response waits on the queue instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"
KEEPALIVE = ": keep-alive\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
_END = object()


def event(data: dict[str, Any] | str, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    body = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"{head}data: {body}\n\n"


async def with_keepalive(events: AsyncIterator[str], keepalive_s: float) -> AsyncIterator[str]:
    """``events``, plus a comment line after every ``keepalive_s`` without one."""
    queue: asyncio.Queue[object] = asyncio.Queue(maxsize=64)

    async def pump() -> None:
        try:
            async for item in events:
                await queue.put(item)
        except Exception as exc:  # handed over: raised in the response's task below
            await queue.put(exc)
        await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            try:
                item = await asyncio.wait_for(queue.get(), keepalive_s)
            except asyncio.TimeoutError:
                yield KEEPALIVE
                continue
            if item is _END:
                return
            if isinstance(item, Exception):
                raise item
            assert isinstance(item, str)
            yield item
    finally:
        # Starlette cancels this generator when the client goes away; the pumped generator's
        # own cleanup (it may cancel the request in Redis) must still run: shielded.
        with anyio.CancelScope(shield=True):
            task.cancel()
            await asyncio.wait([task])
            await aclose(events)


async def aclose(events: AsyncIterator[str]) -> None:
    close = getattr(events, "aclose", None)
    if close is not None:
        with contextlib.suppress(RuntimeError):
            await close()


class EventStream(StreamingResponse):
    """Starlette leaves the body generator suspended when the client disconnects (it cancels
    the send loop, not the generator): this closes it, so its cleanup always runs."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await aclose(self.body_iterator)  # type: ignore[arg-type]


def response(events: AsyncIterator[str], keepalive_s: float, headers: dict[str, str]) -> EventStream:
    body = with_keepalive(events, keepalive_s)
    return EventStream(body, media_type="text/event-stream", headers={**HEADERS, **headers})
