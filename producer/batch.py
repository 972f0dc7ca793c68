"""Batches: many requests submitted as one, pipelined, cancelled and resumed as one.

A batch is ordinary requests plus two keys on the batch's own slot (hash tag
``{batch:<id>}``): ``keys.batch_meta_key`` (total, status, model, created_at) and
``keys.batch_items_key`` (input position -> ``{"id": request id, "custom_id": ...}``).  Each
item is a normal request (its own id, keys and stream) whose job carries
``extra={"batch": <id>, "index": <position>}``.

Submission goes in chunks of `CHUNK` items: one Redis pipeline per chunk (every item's meta,
its entry in the items hash, the index) and one broker connection for the chunk's task
messages (Celery's ``producer_or_acquire``: no connection set-up per message).  Items wait on
the broker, not in a worker: workers prefetch one task per slot (broker/app.py).

Progress and results are read from the items' own meta and streams (consumer/batch.py), so
they need nothing from the workers beyond what every request already writes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from producer.batch_items import BatchItem, parse_items
from schemas import index, keys
from schemas.cancel import SCRIPT as CANCEL_SCRIPT
from schemas.cancel import CancelCall
from schemas.errors import RelayConnectionError, RequestNotFound, ValidationError
from schemas.job import TASK_NAME, Job, queue_for_model
from schemas.redis_util import translate_redis_errors

if TYPE_CHECKING:
    from producer.producer import Producer

CHUNK = 500
MIN_BATCH_TTL_S = 86_400  # a big batch may queue for hours; its two keys are small
FINAL = ("finished", "cancelled", "failed")


def batch_ttl(producer: Producer) -> int:
    return max(producer.ttl_s, MIN_BATCH_TTL_S)


def submit_batch(
    producer: Producer,
    items: Iterable[object],
    *,
    model: str | None = None,
    queue: str | None = None,
    batch_id: str | None = None,
    chunk_size: int = CHUNK,
    **config: Any,
) -> str:
    """Validate every item, then enqueue them all; returns the batch id."""
    parsed = parse_items(items, config, model)
    bid = keys.new_batch_id() if batch_id is None else _check_batch_id(batch_id)
    _create(producer, bid, len(parsed), model)
    _submit_positions(producer, bid, list(enumerate(parsed)), queue, chunk_size)
    return bid


def resume_batch(
    producer: Producer,
    batch_id: str,
    items: Iterable[object],
    *,
    model: str | None = None,
    queue: str | None = None,
    chunk_size: int = CHUNK,
    **config: Any,
) -> list[int]:
    """Submit again the items of an existing batch that never went out, were cancelled, failed
    or expired; finished, queued and running items are left alone.  ``items`` must be the
    batch's input again (same length and custom ids).  Returns the positions resubmitted."""
    parsed = parse_items(items, config, model)
    known = load_items(producer, batch_id)
    _check_same_input(batch_id, parsed, known, producer)
    statuses = item_statuses(producer, [known.get(i, {}).get("id") for i in range(len(parsed))])
    redo = [i for i, status in enumerate(statuses) if status is None or status in ("cancelled", "failed")]
    _set_status(producer, batch_id, "submitting", refresh=True)
    _submit_positions(producer, batch_id, [(i, parsed[i]) for i in redo], queue, chunk_size)
    return redo


def cancel_batch(producer: Producer, batch_id: str, chunk_size: int = 2000) -> int:
    """Stop every item of the batch with the cancel script (schemas/cancel.py), pipelined per
    chunk: queued items end at once as cancelled, running ones at their worker's next step;
    ended or expired ones are left alone.  Returns the number of items.  Idempotent."""
    rids = [item["id"] for item in load_items(producer, batch_id).values()]
    with translate_redis_errors(producer.redis_url):
        for start in range(0, len(rids), chunk_size):
            _cancel_chunk(producer, rids[start : start + chunk_size])
    _set_status(producer, batch_id, "cancelled")
    return len(rids)


def _cancel_chunk(producer: Producer, rids: Sequence[str]) -> None:
    pending = [CancelCall(rid, producer.ttl_s) for rid in rids]
    done: list[CancelCall] = []
    now = time.time()
    while pending:  # a second round only for the queued items (they need their records)
        pipe = producer._redis.pipeline(transaction=False)
        for call in pending:
            # execute_command: a cluster pipeline blocks eval(); the keys share one slot.
            pipe.execute_command("EVAL", CANCEL_SCRIPT, len(call.keys), *call.keys, *call.args)
        replies, now = pipe.execute(), time.time()
        again: list[CancelCall] = []
        for call, reply in zip(pending, replies, strict=True):
            try:
                outcome = call.on_reply(reply, now)
            except RequestNotFound:  # an item whose keys expired: nothing to stop
                continue
            (again if outcome is None else done).append(call)
        pending = again
    commands = [command for call in done for command in call.index_commands(now)]
    if commands:
        pipe = producer._redis.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        pipe.execute()


def load_items(producer: Producer, batch_id: str) -> dict[int, dict[str, Any]]:
    """Position -> ``{"id", "custom_id"}``; ``ValidationError`` for an unknown batch."""
    with translate_redis_errors(producer.redis_url):
        pipe = producer._redis.pipeline(transaction=False)
        pipe.exists(keys.batch_meta_key(batch_id))
        pipe.hgetall(keys.batch_items_key(_check_batch_id(batch_id)))
        exists, raw = pipe.execute()
    if not exists:
        raise ValidationError("batch_id", f"unknown or expired batch {batch_id!r}")
    return {int(k): json.loads(v) for k, v in raw.items()}


def item_statuses(producer: Producer, rids: Sequence[str | None]) -> list[str | None]:
    """Each item's status from its meta hash: queued (no status yet), running, finished,
    cancelled, failed; None when it was never submitted or its keys expired."""
    with translate_redis_errors(producer.redis_url):
        pipe = producer._redis.pipeline(transaction=False)
        for rid in rids:
            if rid is not None:
                pipe.hmget(keys.meta_key(rid), "status", "submitted_at")
        replies = iter(pipe.execute())
    out: list[str | None] = []
    for rid in rids:
        status, submitted = next(replies) if rid is not None else (None, None)
        out.append(None if submitted is None and status is None else (status or b"queued").decode())
    return out


def _check_batch_id(batch_id: str) -> str:
    return keys.check_request_id(batch_id)  # the same alphabet: it must not break the hash tag


def _check_same_input(batch_id: str, parsed: list[BatchItem], known: dict[int, dict[str, Any]], p: Producer) -> None:
    with translate_redis_errors(p.redis_url):
        total = int(p._redis.hget(keys.batch_meta_key(batch_id), "total") or -1)
    if total != len(parsed):
        raise ValidationError("items", f"batch {batch_id} has {total} items, the input has {len(parsed)}")
    for i, entry in known.items():
        if i < len(parsed) and entry.get("custom_id") != parsed[i].custom_id:
            theirs = entry.get("custom_id")
            raise ValidationError(f"items[{i}].custom_id", f"differs from batch {batch_id}'s ({theirs!r})")


def _create(producer: Producer, batch_id: str, total: int, model: str | None) -> None:
    ttl, now = batch_ttl(producer), time.time()
    meta = keys.batch_meta_key(batch_id)
    with translate_redis_errors(producer.redis_url):
        if producer._redis.exists(meta):
            raise ValidationError("batch_id", f"batch {batch_id} exists already (resume it instead)")
        pipe = producer._redis.pipeline(transaction=False)
        fields: dict[Any, Any] = {"total": total, "created_at": repr(now), "model": model or "", "status": "submitting"}
        pipe.hset(meta, mapping=fields)
        pipe.expire(meta, ttl)
        for command in index.on_batch_created(batch_id, total, model, ttl, now=now):
            pipe.execute_command(*command)
        pipe.execute()


def _set_status(producer: Producer, batch_id: str, status: str, refresh: bool = False) -> None:
    with translate_redis_errors(producer.redis_url):
        pipe = producer._redis.pipeline(transaction=False)
        pipe.hset(keys.batch_meta_key(batch_id), "status", status)
        if refresh:
            pipe.expire(keys.batch_meta_key(batch_id), batch_ttl(producer))
            pipe.expire(keys.batch_items_key(batch_id), batch_ttl(producer))
        for command in index.on_batch_status(batch_id, status):
            pipe.execute_command(*command)
        pipe.execute()


def _submit_positions(
    producer: Producer, batch_id: str, todo: list[tuple[int, BatchItem]], queue: str | None, chunk_size: int
) -> None:
    try:
        for start in range(0, len(todo), chunk_size):
            _submit_chunk(producer, batch_id, todo[start : start + chunk_size], queue)
    except BaseException:
        # Ctrl-C or a dead broker mid-way: what went out stays; `resume_batch` sends the rest.
        _set_status(producer, batch_id, "interrupted")
        raise
    _set_status(producer, batch_id, "submitted")


def _job(batch_id: str, position: int, item: BatchItem, ttl_s: int) -> Job:
    return Job(
        request_id=keys.new_request_id(),
        config=item.config,
        submitted_at=time.time(),
        prompt=item.prompt,
        messages=item.messages,
        model=item.model,
        ttl_s=ttl_s,
        extra={"batch": batch_id, "index": position},
    )


def _submit_chunk(producer: Producer, batch_id: str, chunk: list[tuple[int, BatchItem]], queue: str | None) -> None:
    jobs = [_job(batch_id, i, item, producer.ttl_s) for i, item in chunk]
    entries: dict[Any, Any] = {
        str(i): json.dumps({"id": job.request_id, "custom_id": item.custom_id, "chat": item.messages is not None})
        for (i, item), job in zip(chunk, jobs, strict=True)
    }
    with translate_redis_errors(producer.redis_url):
        pipe = producer._redis.pipeline(transaction=False)
        for job in jobs:
            producer._register_into(pipe, job)
        pipe.hset(keys.batch_items_key(batch_id), mapping=entries)
        pipe.expire(keys.batch_items_key(batch_id), batch_ttl(producer))
        for command in index.on_batch_queued(batch_id, jobs):
            pipe.execute_command(*command)
        pipe.execute()
    try:
        _send(producer, jobs, queue)
    except Exception as exc:  # kombu raises many types; all mean "not (all) enqueued"
        # Forget the chunk's entries so that a resume sends them again (a task that did go out
        # before the failure then runs under an id nobody reads: wasted, never duplicated output).
        with translate_redis_errors(producer.redis_url):
            producer._redis.hdel(keys.batch_items_key(batch_id), *entries)
        raise RelayConnectionError(f"could not enqueue batch {batch_id}: {exc}") from exc


def _send(producer: Producer, jobs: list[Job], queue: str | None) -> None:
    app = producer._app
    with app.producer_or_acquire() as conn:  # one broker connection for the whole chunk
        for job in jobs:
            app.send_task(
                TASK_NAME,
                args=[job.to_dict()],
                queue=queue or queue_for_model(job.model),
                producer=conn,
                argsrepr=f"[job {job.request_id}]",
            )
