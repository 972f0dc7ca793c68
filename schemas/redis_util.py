"""Small redis-py helpers shared by producer, consumer and workers (imported lazily: the
schemas package itself does not need redis-py)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio

from schemas import settings
from schemas.cancel import SCRIPT as CANCEL_SCRIPT
from schemas.cancel import CancelCall, CancelOutcome
from schemas.errors import RelayConnectionError

# redis-py 8 defaults to a 5 s socket timeout with retries; XREAD BLOCK stays below it.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0


def describe_url(url: str) -> str:
    """The URL with any password masked (in the netloc or a ``password=`` query parameter),
    for messages and logs."""
    parts = urlsplit(url)
    if parts.password is not None:
        parts = parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@"))
    if "password=" in parts.query:
        query = "&".join("password=***" if q.startswith("password=") else q for q in parts.query.split("&"))
        parts = parts._replace(query=query)
    return urlunsplit(parts)


def connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, **_options())


def connect_async(url: str) -> redis.asyncio.Redis:
    return redis.asyncio.Redis.from_url(url, **_options())


def _options() -> dict[str, float | int]:
    return {
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "max_connections": settings.redis_max_connections(),
    }


@contextmanager
def translate_redis_errors(url: str) -> Iterator[None]:
    """redis-py's connection trouble becomes RelayConnectionError at the boundary."""
    try:
        yield
    except redis.exceptions.MaxConnectionsError as exc:
        # Not an unreachable server: this client is at its own cap (one connection per stream
        # being read).  Still a RelayConnectionError, so that the gateway answers 503.
        cap = settings.redis_max_connections()
        raise RelayConnectionError(
            f"too many open connections to Redis at {describe_url(url)} ({cap}, set by "
            "TOKENRELAY_REDIS_MAX_CONNECTIONS): each stream being read holds one"
        ) from exc
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise RelayConnectionError(f"Redis at {describe_url(url)} is unreachable: {exc}") from exc


def run_cancel(client: redis.Redis, url: str, request_id: str, ttl_s: int) -> CancelOutcome:
    """Run the cancel script (schemas/cancel.py) to its outcome with a blocking client, then
    the request index's update when the canceller ended the request itself."""
    call = CancelCall(request_id, ttl_s)
    script = client.register_script(CANCEL_SCRIPT)
    with translate_redis_errors(url):
        while (outcome := call.on_reply(script(keys=call.keys, args=call.args), time.time())) is None:
            pass
        if commands := call.index_commands():
            with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                pipe.execute()
    return outcome


async def run_cancel_async(client: redis.asyncio.Redis, url: str, request_id: str, ttl_s: int) -> CancelOutcome:
    """`run_cancel` with an asyncio client."""
    call = CancelCall(request_id, ttl_s)
    script = client.register_script(CANCEL_SCRIPT)
    with translate_redis_errors(url):
        while (outcome := call.on_reply(await script(keys=call.keys, args=call.args), time.time())) is None:
            pass
        if commands := call.index_commands():
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                await pipe.execute()
    return outcome
