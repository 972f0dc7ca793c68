"""Batches over HTTP: ``POST /v1/batches``, ``GET /v1/batches/{id}``,
``GET /v1/batches/{id}/results`` (JSONL, input order), ``POST /v1/batches/{id}/cancel``.

``POST /v1/batches`` takes JSON ``{"items": [...], "model"?, <config fields>...}`` (items as
for ``producer.submit_batch``) or ``{"requests": [<OpenAI batch lines>]}``, or the lines
themselves as a JSONL body (``Content-Type: application/jsonl`` or ``application/x-ndjson``).
The producer's calls block (Redis, broker), so they run in a worker thread.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from consumer import AsyncStreamReader
from consumer.openai_batch import output_line
from producer import Producer
from producer.openai_batch import parse_jsonl, parse_line
from schemas.errors import RelayConnectionError, TokenRelayError, ValidationError

JSONL_TYPES = ("application/jsonl", "application/x-ndjson", "application/x-jsonlines")


def error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error object."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status)


def translate(exc: TokenRelayError) -> JSONResponse:
    if isinstance(exc, ValidationError):
        unknown = exc.field == "batch_id" and "unknown" in exc.message
        return error(404 if unknown else 400, str(exc), "not_found" if unknown else "invalid_request_error", exc.field)
    if isinstance(exc, RelayConnectionError):
        return error(503, str(exc), "service_unavailable")
    return error(500, str(exc), "server_error")


def batch_object(progress: dict[str, Any]) -> dict[str, Any]:
    return {"object": "batch", **progress}


def parse_body(raw: bytes, content_type: str) -> tuple[list[Any], dict[str, Any]]:
    """Items and batch-level options from any accepted body shape."""
    if content_type.split(";")[0].strip() in JSONL_TYPES:
        return parse_jsonl(raw.decode().splitlines()), {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValidationError("body", f"not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    if "requests" in body:
        return [parse_line(line) for line in body.pop("requests")], body
    if "items" not in body:
        raise ValidationError("items", "give items (prompts or maps) or requests (OpenAI batch lines)")
    return list(body.pop("items")), body


def router(producer: Callable[[], Producer], reader: Callable[[], AsyncStreamReader]) -> APIRouter:
    """``producer`` and ``reader`` give the gateway's shared clients (created once)."""
    api = APIRouter()

    @api.post("/v1/batches", response_model=None)
    async def create(request: Request) -> Response:
        try:
            items, options = parse_body(await request.body(), request.headers.get("content-type", ""))
            bid = await run_in_threadpool(lambda: producer().submit_batch(items, **options))
            return JSONResponse(batch_object((await reader().batch(bid)).to_dict()))
        except TokenRelayError as exc:
            return translate(exc)

    @api.get("/v1/batches/{batch_id}", response_model=None)
    async def show(batch_id: str) -> Response:
        try:
            return JSONResponse(batch_object((await reader().batch(batch_id)).to_dict()))
        except TokenRelayError as exc:
            return translate(exc)

    @api.post("/v1/batches/{batch_id}/cancel", response_model=None)
    async def cancel(batch_id: str) -> Response:
        try:
            await run_in_threadpool(lambda: producer().cancel_batch(batch_id))
            return JSONResponse(batch_object((await reader().batch(batch_id)).to_dict()))
        except TokenRelayError as exc:
            return translate(exc)

    @api.get("/v1/batches/{batch_id}/results", response_model=None)
    async def results(batch_id: str) -> Response:
        try:
            model = (await reader().batch(batch_id)).model  # 404 before the stream starts
        except TokenRelayError as exc:
            return translate(exc)
        return StreamingResponse(result_lines(reader(), batch_id, model), media_type="application/jsonl")

    return api


async def result_lines(reader: AsyncStreamReader, batch_id: str, model: str | None) -> AsyncIterator[str]:
    """One line per item, in input order, each as soon as its item and all before it ended."""
    async for item in reader.batch_results(batch_id):
        yield json.dumps(output_line(item, model), ensure_ascii=False) + "\n"
