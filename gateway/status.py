"""What the gateway knows of one request, from Redis: its meta hash and its stream.

``lookup``: one round trip (HMGET meta + XREVRANGE COUNT 1 for the last entry id): unknown
ids are a 404 before any response starts.  ``snapshot``: the result so far, read through the
reader up to the entry that was last when the call began (a running request's read must not
wait for records that are not there yet).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from consumer import AsyncStreamReader
from consumer.result import Result, ResultBuilder
from schemas import keys
from schemas.errors import GenerationFailed, RequestNotFound
from schemas.redis_util import translate_redis_errors

TERMINAL = ("finished", "cancelled", "failed")
META_FIELDS = ("status", "model", "api", "submitted_at")


@dataclass(frozen=True)
class RequestInfo:
    request_id: str
    status: str  # queued, running, finished, cancelled, failed
    model: str | None
    api: str  # completion or chat: how its events are rendered
    last_entry_id: str | None
    submitted_at: float  # unix s ("created" in its events: the same in every replay)


def _text(value: object) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


async def lookup(reader: AsyncStreamReader, request_id: str) -> RequestInfo:
    keys.check_request_id(request_id)
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            pipe.hmget(keys.meta_key(request_id), *META_FIELDS)
            pipe.xrevrange(keys.deltas_key(request_id), count=1)
            (status, model, api, submitted), last = await pipe.execute()
    last_id = _text(last[0][0]) if last else None
    if submitted is None and status is None and last_id is None:
        raise RequestNotFound(request_id, f"request {request_id} is unknown or expired")
    state = _text(status) or ("running" if last_id else "queued")
    created = float(_text(submitted) or 0.0)
    return RequestInfo(request_id, state, _text(model) or None, _text(api) or "completion", last_id, created)


async def snapshot(reader: AsyncStreamReader, info: RequestInfo) -> Result:
    builder = ResultBuilder()
    if info.last_entry_id is None:
        return builder.build()
    with contextlib.suppress(GenerationFailed):  # its records were all added before it raised
        async with contextlib.aclosing(reader.stream(info.request_id, timeout_s=10.0)) as records:
            async for record in records:
                builder.add(record)
                if record.entry_id == info.last_entry_id:
                    break
    return builder.build()


def status_of(info: RequestInfo, result: Result) -> str:
    """The stream's own end wins over the meta hash (written in the same script, but a
    request whose meta expired first still reads right)."""
    if result.usage is None:
        return info.status if info.status not in TERMINAL else "running"
    if result.error is not None:
        return "failed"
    if "cancelled" in result.finish_reasons:
        return "cancelled"
    return "finished"
