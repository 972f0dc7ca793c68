"""The request's meta hash at submit, and the idempotent submit of a caller-supplied id.

The meta hash ``tokenrelay:{<id>}:meta`` (written here, then updated by the workers' lease
scripts and the cancel script) holds:

==================  ==========================================================================
``submitted_at``    unix time of the submit (``repr`` of a float)
``model``           the requested model, ``""`` for the default
``job``             ``json.dumps(job.to_dict())``: the task message, so that a worker taking the
                    request over (or a retry) can restart it without the broker's copy
``n``               the number of choices (the cancel script writes one final record per choice)
``ttl_s``           the request's key lifetime (``Producer(ttl_s=...)``); every writer uses it
``digest``          `Job.digest`: what a second submit under the same id is compared with
``status``          ``queued`` here; the workers write ``running``, ``finished``, ``failed``,
                    the workers or the canceller ``cancelled``
==================  ==========================================================================

With a caller-supplied id, one Lua script compares and writes atomically: an unused id is
registered (``new``), the same job again is ``same`` (submit returns the id and enqueues
nothing), anything else under a used id is ``different`` (``ValidationError``).
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from typing import Any

from schemas import keys
from schemas.errors import ValidationError
from schemas.job import Job
from schemas.redis_util import run_cancel as run_cancel

# KEYS: meta, deltas.  ARGV: digest, ttl s, then the other fields as name/value pairs.
REGISTER = """
local digest = redis.call('HGET', KEYS[1], 'digest')
if digest then
  if digest == ARGV[1] then return 'same' end
  return 'different'
end
if redis.call('EXISTS', KEYS[1]) == 1 or redis.call('EXISTS', KEYS[2]) == 1 then return 'different' end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 'new'
"""


class Registered(enum.Enum):
    NEW = "new"
    SAME = "same"  # the same job was submitted under this id before
    DIFFERENT = "different"  # the id is in use by another job


def meta_fields(job: Job) -> dict[str, Any]:
    return {
        "submitted_at": repr(job.submitted_at),
        "model": job.model or "",
        "job": json.dumps(job.to_dict(), separators=(",", ":")),
        "n": job.config.n,
        "ttl_s": job.ttl_s,
        "digest": job.digest(),
        "status": "queued",
        # How the gateway renders its events (chat chunks or completion chunks); written here,
        # in the submit's round trip, rather than by the gateway in a second one.
        "api": "chat" if job.messages is not None else "completion",
    }


def register_keys(job: Job) -> list[str]:
    return [keys.meta_key(job.request_id), keys.deltas_key(job.request_id)]


def register_args(job: Job) -> list[Any]:
    fields = meta_fields(job)
    args: list[Any] = [fields.pop("digest"), job.ttl_s]
    for name, value in fields.items():
        args += [name, value]
    return args


def register_into(pipe: Any, job: Job) -> None:
    """The register script into a pipeline.  EVAL rather than EVALSHA: redis-py's pipeline
    would add a SCRIPT EXISTS round trip to every execute; the text is small and the server
    caches its compiled form by hash.  Through ``execute_command``: redis-py's cluster
    pipeline blocks its ``eval`` method (it cannot know the keys share a slot; they do)."""
    pipe.execute_command("EVAL", REGISTER, 2, *register_keys(job), *register_args(job))


def check_registered(job: Job, reply: object) -> Registered:
    outcome = Registered(reply.decode() if isinstance(reply, bytes) else str(reply))
    if outcome is Registered.DIFFERENT:
        raise ValidationError(
            "request_id",
            f"{job.request_id!r} is already used by a different request (same id and same prompt, messages, "
            "model and config make a repeated submit idempotent)",
        )
    return outcome


def add_commands(pipe: Any, commands: Iterable[tuple[str, ...]]) -> None:
    for command in commands:
        pipe.execute_command(*command)
