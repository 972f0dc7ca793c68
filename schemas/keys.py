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
