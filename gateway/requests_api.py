"""``GET /v1/requests/{id}`` (status and result so far), ``GET /v1/requests/{id}/events``
(SSE: replay from the start or after a cursor, then live) and ``POST /v1/requests/{id}/cancel``.

They work for any request, whoever submitted it (Python, the CLI, another gateway): everything
they need is in Redis.  Watching never cancels; only the cancel endpoint does.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from consumer.result import Result
from gateway import render, sse, status
from gateway.errors import from_worker_error
from gateway.schema import ErrorResponse, RequestStatus
from gateway.state import Gateway
from gateway.streaming import Observer, record_events
from schemas import index as index_commands
from schemas.redis_util import translate_redis_errors

ERRORS: dict[int | str, dict[str, Any]] = {code: {"model": ErrorResponse} for code in (400, 401, 404, 503)}


def status_body(info: status.RequestInfo, result: Result) -> dict[str, Any]:
    choices = [
        {"index": i, "text": text, **render.finish_fields(result.finish_reasons[i])}
        for i, text in enumerate(result.texts)
    ]
    error = None
    if result.error is not None:
        error = from_worker_error(result.error.type, result.error.message).body()["error"]
    return {
        "id": info.request_id,
        "object": "tokenrelay.request",
        "status": status.status_of(info, result),
        "model": info.model,
        "choices": choices,
        "usage": render.usage_dict(result.usage),
        "error": error,
        "last_event_id": result.last_entry_id,
    }


def router(gw: Gateway) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/requests/{request_id}", response_model=RequestStatus, responses=ERRORS)
    async def show(request_id: str) -> JSONResponse:
        info = await status.lookup(gw.clients.reader, request_id)
        result = await status.snapshot(gw.clients.reader, info)
        return JSONResponse(status_body(info, result), headers={"X-Request-Id": request_id})

    @api.get(
        "/v1/requests/{request_id}/events", response_model=None,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE"}, **ERRORS},
    )  # fmt: skip
    async def events(
        request_id: str,
        request: Request,
        after: str = Query("0", description="resume after this entry id (the SSE id)"),
        last_event_id: str | None = Header(None, description="what EventSource sends on reconnect"),
    ) -> Response:
        reader = gw.clients.reader
        info = await status.lookup(reader, request_id)
        cursor = last_event_id or after
        records = reader.stream(request_id, after=cursor, timeout_s=None)  # a bad cursor: 400 here
        head = render.Head("chat" if info.api == "chat" else "completion", request_id,
                           info.model or "tokenrelay", int(info.submitted_at or time.time()))  # fmt: skip
        renderer = render.ChunkRenderer(head, include_usage=True, from_start=cursor in ("0", "0-0"))
        observer = Observer(gw.metrics, None, generation=False)
        body = record_events(reader, request_id, records, renderer, observer, cancel_on_disconnect=False)
        return sse.response(body, gw.keepalive_s, {"X-Request-Id": request_id})

    @api.post("/v1/requests/{request_id}/cancel", response_model=RequestStatus, responses=ERRORS)
    async def cancel(request_id: str) -> JSONResponse:
        reader = gw.clients.reader
        info = await status.lookup(reader, request_id)
        if info.status not in status.TERMINAL:
            await reader.cancel(request_id)
            await mark_cancel_requested(gw, request_id)
        result = await status.snapshot(reader, info)
        return JSONResponse(status_body(info, result), headers={"X-Request-Id": request_id})

    return api


async def mark_cancel_requested(gw: Gateway, request_id: str) -> None:
    """The request index's event (schemas/index.py), so that live dashboards show it."""
    reader = gw.clients.reader
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            for command in index_commands.on_cancel_requested(request_id):
                pipe.execute_command(*command)
            await pipe.execute()
