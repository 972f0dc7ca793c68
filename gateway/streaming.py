"""One request's records as SSE events (the create endpoints' ``stream: true`` and
``GET /v1/requests/{id}/events``).

Records come only from ``AsyncStreamReader.stream``; each becomes one chunk event (two on the
last record when usage is asked for), all with ``id: <entry id>``.  A failed request (or a
stream that breaks: expired, timeout) ends with an error event in OpenAI's error object, then
``data: [DONE]``.  When the client goes away before the end and ``cancel_on_disconnect``,
the request is cancelled (shielded: the response task is being cancelled at that point).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator

import anyio

from consumer import AsyncStreamReader
from gateway import sse
from gateway.errors import from_exception
from gateway.metrics import Metrics
from gateway.render import ChunkRenderer
from schemas.errors import TokenRelayError
from schemas.records import Record

log = logging.getLogger("tokenrelay.gateway")


class Observer:
    """Feeds the metrics from one stream."""

    def __init__(self, metrics: Metrics, started: float | None, generation: bool) -> None:
        self.metrics = metrics
        self.started = started  # monotonic time of the submit; None when not submitted here
        self.generation = generation
        self.first = True
        metrics.sse_clients.inc()
        if generation:
            metrics.active_streams.inc()

    def record(self, record: Record) -> None:
        if self.started is not None and self.first:
            self.metrics.ttft.observe(time.monotonic() - self.started)
        self.first = False
        if record.usage is not None and self.generation:
            self.metrics.tokens.labels("prompt").inc(record.usage.prompt_tokens)
            self.metrics.tokens.labels("completion").inc(record.usage.completion_tokens)
            if self.started is not None:
                self.metrics.e2e.observe(time.monotonic() - self.started)

    def close(self, outcome: str) -> None:
        self.metrics.streams.labels(outcome).inc()
        self.metrics.sse_clients.dec()
        if self.generation:
            self.metrics.active_streams.dec()


async def record_events(
    reader: AsyncStreamReader,
    request_id: str,
    records: AsyncGenerator[Record, None],
    renderer: ChunkRenderer,
    observer: Observer,
    cancel_on_disconnect: bool,
) -> AsyncIterator[str]:
    """``records`` is ``reader.stream(...)``, made by the caller so that a bad cursor is a
    400 before the response starts."""
    last: str | None = None
    outcome = "disconnected"
    try:
        async with contextlib.aclosing(records):
            async for record in records:
                observer.record(record)
                for chunk in renderer.chunks(record):
                    yield sse.event(chunk, record.entry_id)
                last = record.entry_id
        outcome = "finished"
    except TokenRelayError as exc:
        outcome = "failed"
        yield sse.event(from_exception(exc).body(), last)
    finally:
        if outcome == "disconnected" and cancel_on_disconnect:
            await cancel_quietly(reader, request_id)
        observer.close(outcome)
    yield sse.event("[DONE]", last)


async def cancel_quietly(reader: AsyncStreamReader, request_id: str) -> None:
    with anyio.CancelScope(shield=True):
        try:
            await reader.cancel(request_id)
        except TokenRelayError as exc:  # Redis gone: the request runs on; nothing else to do
            log.warning("could not cancel %s after its client left: %s", request_id, exc)
