"""Batch progress and results over Redis, for `StreamReader` (sync) and `AsyncStreamReader`.

Progress: two round trips (the batch's two keys; then every item's meta, pipelined).
Results: each item read in input order with the reader's own ``result`` (so a reader resumes,
reconnects and times out exactly as for a single request).  ``timeout_s`` applies per item
and defaults to None (wait): an item may sit on the broker behind thousands of others
without any record to show for it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from consumer.batch import META_FIELDS, BatchItemResult, BatchProgress, outcome, parse_items, parse_meta, progress
from schemas import keys
from schemas.errors import GenerationFailed, RequestNotFound
from schemas.redis_util import translate_redis_errors

if TYPE_CHECKING:
    from consumer.aio import AsyncStreamReader
    from consumer.sync import StreamReader

WAIT_FOR_SUBMISSION_S = 0.2


def batch_progress(reader: StreamReader, batch_id: str) -> BatchProgress:
    meta, items = load(reader, batch_id)
    with translate_redis_errors(reader.label), reader._client.pipeline(transaction=False) as pipe:
        for position in sorted(items):
            pipe.hmget(keys.meta_key(items[position]["id"]), *META_FIELDS)
        metas = pipe.execute()
    return progress(batch_id, meta, items, metas)


def load(reader: StreamReader, batch_id: str) -> tuple[dict[str, str], dict[int, dict[str, Any]]]:
    keys.check_request_id(batch_id)
    with translate_redis_errors(reader.label), reader._client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.batch_meta_key(batch_id))
        pipe.hgetall(keys.batch_items_key(batch_id))
        raw_meta, raw_items = pipe.execute()
    return parse_meta(batch_id, raw_meta), parse_items(raw_items)


def batch_results(reader: StreamReader, batch_id: str, timeout_s: float | None = None) -> Iterator[BatchItemResult]:
    meta, items = load(reader, batch_id)
    for position in range(int(meta["total"])):
        while position not in items and meta.get("status") == "submitting":
            time.sleep(WAIT_FOR_SUBMISSION_S)  # the producer is still sending later chunks
            meta, items = load(reader, batch_id)
        yield _item(reader, position, items.get(position), timeout_s)


def _item(
    reader: StreamReader, position: int, entry: dict[str, Any] | None, timeout_s: float | None
) -> BatchItemResult:
    if entry is None:
        return not_submitted(position)
    rid, custom_id, chat = entry["id"], entry.get("custom_id"), bool(entry.get("chat"))
    try:
        result = reader.result(rid, timeout_s=timeout_s)
    except GenerationFailed as exc:
        error = {"type": exc.error_type, "message": exc.error_message}
        return BatchItemResult(position, custom_id, rid, "failed", exc.result, error, chat)
    except RequestNotFound as exc:
        error = {"type": "expired", "message": str(exc)}
        return BatchItemResult(position, custom_id, rid, "expired", None, error, chat)
    return BatchItemResult(position, custom_id, rid, outcome(result), result, None, chat)


def not_submitted(position: int) -> BatchItemResult:
    error = {"type": "not_submitted", "message": "the batch's submission stopped before this item"}
    return BatchItemResult(position, None, None, "not_submitted", None, error)


# -- asyncio: the same steps with await ------------------------------------------------------


async def batch_progress_async(reader: AsyncStreamReader, batch_id: str) -> BatchProgress:
    meta, items = await load_async(reader, batch_id)
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            for position in sorted(items):
                pipe.hmget(keys.meta_key(items[position]["id"]), *META_FIELDS)
            metas = await pipe.execute()
    return progress(batch_id, meta, items, metas)


async def load_async(reader: AsyncStreamReader, batch_id: str) -> tuple[dict[str, str], dict[int, dict[str, Any]]]:
    keys.check_request_id(batch_id)
    with translate_redis_errors(reader.label):
        async with reader._client.pipeline(transaction=False) as pipe:
            pipe.hgetall(keys.batch_meta_key(batch_id))
            pipe.hgetall(keys.batch_items_key(batch_id))
            raw_meta, raw_items = await pipe.execute()
    return parse_meta(batch_id, raw_meta), parse_items(raw_items)


async def batch_results_async(
    reader: AsyncStreamReader, batch_id: str, timeout_s: float | None = None
) -> AsyncIterator[BatchItemResult]:
    import asyncio

    meta, items = await load_async(reader, batch_id)
    for position in range(int(meta["total"])):
        while position not in items and meta.get("status") == "submitting":
            await asyncio.sleep(WAIT_FOR_SUBMISSION_S)
            meta, items = await load_async(reader, batch_id)
        yield await _item_async(reader, position, items.get(position), timeout_s)


async def _item_async(
    reader: AsyncStreamReader, position: int, entry: dict[str, Any] | None, timeout_s: float | None
) -> BatchItemResult:
    if entry is None:
        return not_submitted(position)
    rid, custom_id, chat = entry["id"], entry.get("custom_id"), bool(entry.get("chat"))
    try:
        result = await reader.result(rid, timeout_s=timeout_s)
    except GenerationFailed as exc:
        error = {"type": exc.error_type, "message": exc.error_message}
        return BatchItemResult(position, custom_id, rid, "failed", exc.result, error, chat)
    except RequestNotFound as exc:
        error = {"type": "expired", "message": str(exc)}
        return BatchItemResult(position, custom_id, rid, "expired", None, error, chat)
    return BatchItemResult(position, custom_id, rid, outcome(result), result, None, chat)
