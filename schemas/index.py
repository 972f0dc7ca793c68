"""The request index: who is queued, running, recently ended, and a live feed of changes.

Pure: these functions only *build* Redis command tuples (``("ZADD", key, score, member)``);
the producer, the workers and the canceller append them to the pipeline or round trip they
send anyway, so the index costs no extra round trip.  Run them with
``pipe.execute_command(*command)``.

Keys and where they live
------------------------
Global keys, each on the one Redis Cluster slot of its name:

- ``keys.INDEX_EVENTS_KEY``  stream, capped with ``XADD MAXLEN ~ EVENTS_MAXLEN``: one JSON
  event (field ``e``) per state change: queued, running, progress, finished/cancelled/failed,
  batch.  Live views (the dashboard, ``reader.events()``) XREAD it.
- ``keys.INDEX_QUEUED_KEY``  sorted set request id -> ms queued; ``keys.INDEX_RUNNING_KEY``
  request id -> ms of its start or last progress; both lose the id when it ends.
- ``keys.INDEX_RECENT_KEY``  request id -> ms it ended, trimmed to ``RECENT_MAX``.
- ``keys.BATCHES_KEY``       batch id -> ms created, trimmed to ``BATCHES_MAX`` and by age.

Per request (its own slot, hash tag ``{<request_id>}``): the meta hash that the producer and
the lease scripts already keep (``status``, ``tokens``, ``worker``, ``job``); the index adds
nothing there.  Per batch (hash tag ``{batch:<id>}``, one slot per batch): ``batch_meta_key``
and ``batch_items_key`` (see producer/batch.py).

Why the global slots are not hot spots: they are written a few times per *request* (queued,
running, a progress event at most about once a second while it runs, finished), never per
token or per record; a batch of 10,000 items writes one ZADD per chunk and one event.  At
1,000 requests a minute that is well under a hundred small writes a second.

Bounded: the stream is capped; every sorted set is trimmed by size (and by age where an
entry could be stranded, e.g. a request whose keys expired while queued) by the same
command lists that add to it; per-request and per-batch keys carry TTLs.  Nothing grows
with total traffic.

Idempotent: ZADD/ZREM/trims may be sent twice (a worker resends a round trip after a
connection error); a repeated XADD only repeats an event, and readers fold events by request
id where a terminal status wins (``fold``).  ``on_progress`` uses ``ZADD XX`` so that a late
progress from a worker that lost its lease cannot bring an ended request back to "running".
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from schemas import keys
from schemas.job import Job

Command = tuple[str, ...]

EVENTS_MAXLEN = 10_000
RECENT_MAX = 5_000
QUEUED_MAX = 200_000  # a few big batches may wait on the broker at once
RUNNING_STALE_S = 3600  # a running entry not refreshed for this long belonged to a lost request
BATCHES_MAX = 1_000
PREVIEW_CHARS = 80
TERMINAL = ("finished", "cancelled", "failed")
USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "ttft_s", "decode_tokens_per_s", "queue_s", "e2e_s")


def _now(now: float | None) -> float:
    return time.time() if now is None else now


def _ms(t: float) -> str:
    return str(int(t * 1000))


def event(fields: Mapping[str, Any]) -> Command:
    """One event on the capped stream; None values are left out to keep entries small."""
    payload = json.dumps({k: v for k, v in fields.items() if v is not None}, separators=(",", ":"))
    return ("XADD", keys.INDEX_EVENTS_KEY, "MAXLEN", "~", str(EVENTS_MAXLEN), "*", "e", payload)


def preview(job: Job) -> str:
    """The start of the prompt (or the last message) for the dashboard's row."""
    text = job.prompt if job.prompt is not None else (job.messages or [{}])[-1].get("content", "")
    return text[:PREVIEW_CHARS]


def _trim_queued(now: float, ttl_s: int) -> list[Command]:
    return [
        ("ZREMRANGEBYSCORE", keys.INDEX_QUEUED_KEY, "-inf", f"({_ms(now - ttl_s)}"),
        ("ZREMRANGEBYRANK", keys.INDEX_QUEUED_KEY, "0", str(-QUEUED_MAX - 1)),
    ]


def on_queued(job: Job, batch_id: str | None = None, *, now: float | None = None) -> list[Command]:
    """A request was enqueued (the producer, in its register pipeline)."""
    t = _now(now)
    return [
        ("ZADD", keys.INDEX_QUEUED_KEY, _ms(t), job.request_id),
        *_trim_queued(t, job.ttl_s),
        event(
            {
                "id": job.request_id,
                "s": "queued",
                "t": t,
                "model": job.model,
                "batch": batch_id,
                "n": job.config.n,
                "max_tokens": job.config.max_tokens,
                "prompt": preview(job),
            }
        ),
    ]


def on_batch_queued(batch_id: str, jobs: Sequence[Job], *, now: float | None = None) -> list[Command]:
    """A chunk of a batch was enqueued: one ZADD for the chunk and no per-item event (10,000
    queued events would flush the capped stream; the batch's own event says it)."""
    if not jobs:
        return []
    t = _now(now)
    members = [arg for job in jobs for arg in (_ms(t), job.request_id)]
    return [("ZADD", keys.INDEX_QUEUED_KEY, *members), *_trim_queued(t, jobs[0].ttl_s)]


def on_batch_created(
    batch_id: str, total: int, model: str | None, ttl_s: int, *, now: float | None = None
) -> list[Command]:
    t = _now(now)
    return [
        ("ZADD", keys.BATCHES_KEY, _ms(t), batch_id),
        ("ZREMRANGEBYSCORE", keys.BATCHES_KEY, "-inf", f"({_ms(t - ttl_s)}"),
        ("ZREMRANGEBYRANK", keys.BATCHES_KEY, "0", str(-BATCHES_MAX - 1)),
        event({"batch": batch_id, "s": "batch", "t": t, "total": total, "model": model}),
    ]


def on_batch_status(batch_id: str, status: str, *, now: float | None = None) -> list[Command]:
    """The batch was fully submitted, interrupted or cancelled (an event for live views)."""
    return [event({"batch": batch_id, "s": "batch", "t": _now(now), "status": status})]


def on_running(
    request_id: str,
    worker_id: str,
    model: str | None,
    batch_id: str | None,
    attempt: int,
    *,
    now: float | None = None,
) -> list[Command]:
    """A worker claimed the request (attempt 1) or took it over (attempt 2, 3, ...)."""
    t = _now(now)
    return [
        ("ZREM", keys.INDEX_QUEUED_KEY, request_id),
        ("ZADD", keys.INDEX_RUNNING_KEY, _ms(t), request_id),
        ("ZREMRANGEBYSCORE", keys.INDEX_RUNNING_KEY, "-inf", f"({_ms(t - RUNNING_STALE_S)}"),
        event(
            {"id": request_id, "s": "running", "t": t, "worker": worker_id, "model": model,
             "batch": batch_id, "attempt": attempt}
        ),
    ]  # fmt: skip


def on_progress(
    request_id: str,
    tokens: int,
    *,
    ttft_s: float | None = None,
    tokens_per_s: float | None = None,
    batch_id: str | None = None,
    now: float | None = None,
) -> list[Command]:
    """Tokens so far of a running request; send at most about once a second per request."""
    t = _now(now)
    return [
        ("ZADD", keys.INDEX_RUNNING_KEY, "XX", _ms(t), request_id),
        event(
            {"id": request_id, "s": "progress", "t": t, "tokens": tokens, "ttft_s": ttft_s,
             "tps": tokens_per_s, "batch": batch_id}
        ),
    ]  # fmt: skip


def on_finished(
    request_id: str,
    status: str,
    usage: Mapping[str, Any] | None,
    batch_id: str | None,
    finish_reason: str | None,
    tokens: int,
    *,
    now: float | None = None,
) -> list[Command]:
    """The request's last record was written; ``status`` is finished, cancelled or failed."""
    if status not in TERMINAL:
        raise ValueError(f"status must be one of {TERMINAL}, got {status!r}")
    t = _now(now)
    short = {k: usage[k] for k in USAGE_FIELDS if usage and k in usage}
    return [
        ("ZREM", keys.INDEX_QUEUED_KEY, request_id),
        ("ZREM", keys.INDEX_RUNNING_KEY, request_id),
        ("ZADD", keys.INDEX_RECENT_KEY, _ms(t), request_id),
        ("ZREMRANGEBYRANK", keys.INDEX_RECENT_KEY, "0", str(-RECENT_MAX - 1)),
        event(
            {"id": request_id, "s": status, "t": t, "finish_reason": finish_reason, "tokens": tokens,
             "usage": short or None, "batch": batch_id}
        ),
    ]  # fmt: skip


def on_cancel_requested(request_id: str, *, now: float | None = None) -> list[Command]:
    """Someone asked the request to stop (it ends as cancelled once the worker sees it)."""
    return [event({"id": request_id, "s": "cancelling", "t": _now(now)})]


RANK = {"queued": 0, "running": 1, "progress": 1, "cancelling": 2, "finished": 3, "cancelled": 3, "failed": 3}


def fold(state: dict[str, Any], ev: Mapping[str, Any]) -> dict[str, Any]:
    """Merge one event into a request's state: fields accumulate, the status only moves
    forward (a duplicate or a late event never reopens an ended request)."""
    fields = {k: v for k, v in ev.items() if k != "s"}
    old, new = state.get("s"), ev.get("s")
    if old is None or RANK.get(str(new), 0) >= RANK.get(str(old), 0):
        return {**state, **fields, "s": "running" if new == "progress" else new}
    return {**fields, **state}  # a late event only fills gaps
