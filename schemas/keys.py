"""Every Redis key tokenrelay uses, built in one place.

All keys of one request share the hash tag ``{<request_id>}`` so that they live on one
Redis Cluster slot and one pipeline or transaction may touch them together.
"""

from __future__ import annotations

import re
import secrets

from schemas.errors import ValidationError

PREFIX = "tokenrelay"
_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def deltas_key(request_id: str) -> str:
    """The request's stream of records."""
    return f"{PREFIX}:{{{request_id}}}:deltas"


def cancel_key(request_id: str) -> str:
    """Exists while someone asks the worker to stop the request."""
    return f"{PREFIX}:{{{request_id}}}:cancel"


def meta_key(request_id: str) -> str:
    """A small hash written at submit time, so that a queued request (no records yet) is
    told apart from an unknown one."""
    return f"{PREFIX}:{{{request_id}}}:meta"


def lease_key(request_id: str) -> str:
    """``<worker id>/<attempt>`` of the worker that decodes the request, with a TTL of the lease
    (a few seconds, renewed every engine step).  It is the write fence: a worker publishes
    only while the key holds its own value (see workers/lease.py)."""
    return f"{PREFIX}:{{{request_id}}}:lease"


# Global keys (not per request).  In Redis Cluster each lives on the one slot of its name;
# they are touched once per engine step per worker (leases) or once per heartbeat, never per
# record, so that slot does not become a hot spot.
LEASES_KEY = f"{PREFIX}:leases"
"""Sorted set: request id -> lease expiry (unix ms) of every request a worker holds.  Live
workers look here for expired leases of unfinished requests and take them over."""

WORKERS_KEY = f"{PREFIX}:workers"
"""Sorted set: worker id -> last heartbeat (unix ms)."""


def worker_key(worker_id: str) -> str:
    """A worker's heartbeat hash (`schemas.workers.WorkerInfo`), with a TTL of a few beats."""
    return f"{PREFIX}:worker:{worker_id}"


# The request index and batches (schemas/index.py explains where they live and why the
# global ones are not hot spots: a few writes per request, never one per token).
INDEX_EVENTS_KEY = f"{PREFIX}:index:events"
"""Capped stream of request state changes (queued, running, progress, finished) for live views."""

INDEX_QUEUED_KEY = f"{PREFIX}:index:queued"
"""Sorted set: request id -> unix ms it was queued (removed when it starts or ends)."""

INDEX_RUNNING_KEY = f"{PREFIX}:index:running"
"""Sorted set: request id -> unix ms of its last start or progress (removed when it ends)."""

INDEX_RECENT_KEY = f"{PREFIX}:index:recent"
"""Sorted set: request id -> unix ms it ended; trimmed to the newest few thousand."""

BATCHES_KEY = f"{PREFIX}:index:batches"
"""Sorted set: batch id -> unix ms it was created; trimmed by age and size."""


def batch_meta_key(batch_id: str) -> str:
    """A batch's hash (total, created_at, model, status); batch keys share ``{batch:<id>}``."""
    return f"{PREFIX}:{{batch:{batch_id}}}:meta"


def batch_items_key(batch_id: str) -> str:
    """Hash: input position -> JSON ``{"id": request id, "custom_id": ...}``."""
    return f"{PREFIX}:{{batch:{batch_id}}}:items"


def new_batch_id() -> str:
    """``batch_`` + 128 random bits, like a request id (a batch id reads every item's text)."""
    return "batch_" + secrets.token_hex(16)


CANCEL_VALUE = b"1"


def cancel_set_args(request_id: str, ttl_s: int) -> tuple[str, bytes, int]:
    """``SET key value EX ttl`` arguments that ask the worker to stop a request; the one
    spelling shared by the producer and both readers (the key expires by itself)."""
    return cancel_key(check_request_id(request_id)), CANCEL_VALUE, ttl_s


def new_request_id() -> str:
    """128 random bits, URL-safe: unguessable, so a request id works as a bearer capability."""
    return secrets.token_hex(16)


def check_request_id(request_id: object) -> str:
    """A caller-supplied id must be a short string that cannot break the hash tag."""
    if not isinstance(request_id, str) or not _ID_RE.match(request_id):
        raise ValidationError("request_id", f"must be 1-128 characters of A-Z a-z 0-9 . _ : -, got {request_id!r}")
    return request_id


def entry_id_for(seq: int) -> str:
    """Stream entry ids are explicit, ``<seq + 1>-0``.  Redis refuses an XADD whose id is not
    above the stream's last one, so two workers that both believe they own a request (a
    redelivered task) can never write the same ``seq`` twice: the second write fails."""
    return f"{seq + 1}-0"


def seq_of_entry_id(entry_id: str) -> int:
    return int(entry_id.split("-", 1)[0]) - 1
