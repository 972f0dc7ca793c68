"""``POST /v1/completions`` and ``POST /v1/chat/completions``.

Submit through the Producer (in the threadpool), then one of three answers: ``background``
→ 202 with the id; ``stream`` → SSE (gateway/streaming.py; a disconnect cancels); else wait
for the whole result and answer OpenAI's object (a failed request → its error status).  A
client that leaves while it waits for a whole result cancels its request too: the wait races
the ASGI ``http.disconnect`` message (nothing else reads from ``receive`` once the body is in).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from consumer.result import Result
from gateway import render, sse, translate
from gateway.errors import ApiError
from gateway.models import live_models
from gateway.schema import (
    BackgroundResponse,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
)
from gateway.state import RESULT_TIMEOUT_S, Gateway
from gateway.streaming import Observer, cancel_quietly, record_events

DEFAULT_MODEL = "tokenrelay"  # what responses say when the request named no model
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 500, 502, 503, 504)
}


def responses(ok: type) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": ok, "description": "the result, or text/event-stream when stream is true"},
            202: {"model": BackgroundResponse, "description": "background: the request id"}, **ERRORS}  # fmt: skip


async def check_model(gw: Gateway, model: str | None) -> None:
    """Refuse a model no live worker serves (while any worker is live: with none, the request
    waits on its queue for one to start, as a queued job does)."""
    if model is None:
        return
    workers = await live_models(gw.clients.reader)
    if workers and not any(w.serves(model) for w in workers):
        served = sorted({w.model for w in workers})
        raise ApiError(404, f"model: no live worker serves {model!r}; served: {served}", param="model",
                       code="model_not_found")  # fmt: skip


async def create(gw: Gateway, sub: translate.Submission, request: Request) -> Response:
    await check_model(gw, sub.model)
    started = time.monotonic()
    rid = await gw.clients.submit(sub.prompt, messages=sub.messages, model=sub.model, **sub.config)
    request.state.request_id = rid  # error answers from here on carry it
    reader = gw.clients.reader
    headers = {"X-Request-Id": rid}
    if sub.background:
        return JSONResponse({"id": rid, "object": "tokenrelay.request", "status": "queued"}, 202, headers=headers)
    head = render.Head(sub.api, rid, sub.model or DEFAULT_MODEL, int(time.time()))
    if sub.stream:
        renderer = render.ChunkRenderer(head, sub.include_usage, from_start=True)
        observer = Observer(gw.metrics, started, generation=True)
        records = reader.stream(rid, timeout_s=None)
        events = record_events(reader, rid, records, renderer, observer, cancel_on_disconnect=True)
        return sse.response(events, gw.keepalive_s, headers)
    result = await result_unless_gone(gw, rid, request)
    if result is None:
        return Response(status_code=499, headers=headers)  # nobody reads it: nginx's "client closed"
    gw.metrics.e2e.observe(time.monotonic() - started)
    if result.usage is not None:
        gw.metrics.tokens.labels("prompt").inc(result.usage.prompt_tokens)
        gw.metrics.tokens.labels("completion").inc(result.usage.completion_tokens)
    return JSONResponse(render.response(head, result), headers=headers)


async def result_unless_gone(gw: Gateway, rid: str, request: Request) -> Result | None:
    """The whole result, or None when the client disconnected first (its request cancelled)."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    waiter = asyncio.ensure_future(gw.clients.reader.result(rid, timeout_s=RESULT_TIMEOUT_S))
    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not waiter.done():
            waiter.cancel()
    if waiter.done() and not waiter.cancelled():
        return waiter.result()  # its errors are the answer's
    await cancel_quietly(gw.clients.reader, rid)
    return None


def router(gw: Gateway) -> APIRouter:
    api = APIRouter()

    @api.post("/v1/completions", response_model=None, responses=responses(CompletionResponse))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create(gw, translate.completion(body), request)

    @api.post("/v1/chat/completions", response_model=None, responses=responses(ChatCompletionResponse))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create(gw, translate.chat(body), request)

    return api
