"""Small redis-py helpers shared by producer, consumer and workers (imported lazily: the
schemas package itself does not need redis-py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster

from schemas import settings
from schemas.cancel import SCRIPT as CANCEL_SCRIPT
from schemas.cancel import CancelCall, CancelOutcome
from schemas.cluster_url import ClusterURL, is_cluster_url, parse_cluster_url
from schemas.errors import RelayConnectionError, ValidationError

# redis-py 8 defaults to a 5 s socket timeout with retries; XREAD BLOCK stays below it.
SOCKET_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 5.0
T = TypeVar("T")


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


# A standalone server or a Redis Cluster: the same command methods, pipelines and scripts
# (every key of one request shares a hash tag, so each script call and each command stays on
# one slot; see schemas/keys.py).
SyncClient = redis.Redis | redis.cluster.RedisCluster
AsyncClient = redis.asyncio.Redis | redis.asyncio.RedisCluster

# Raised by a Redis Cluster while it moves slots or fails over: a new master is being elected
# (CLUSTERDOWN, MASTERDOWN), a slot is being migrated (TRYAGAIN, a MOVED/ASK still left after
# redis-py's own redirections) or no node covers a slot in the client's map yet.  redis-py's
# cluster client already retries these a few times; whatever escapes is treated like an
# unreachable server: retried by workers, RelayConnectionError for everyone else.
CLUSTER_TRANSIENT: tuple[type[Exception], ...] = (
    redis.exceptions.ClusterDownError,
    redis.exceptions.TryAgainError,
    redis.exceptions.AskError,  # MovedError is a subclass
    redis.exceptions.SlotNotCoveredError,
)


# What an outage may raise; `is_outage` tells the outages apart from the bugs among them.
OUTAGE_ERRORS: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    *CLUSTER_TRANSIENT,
    redis.exceptions.RedisClusterException,
)


def is_outage(exc: BaseException) -> bool:
    """Redis is away or a cluster is failing over: worth waiting for and sending again.
    redis-py raises RedisClusterException when no node answers ("Redis Cluster cannot be
    connected"), caused by the connection error; its other uses (a blocked pipeline command,
    a cross-slot transaction) are bugs, not outages."""
    if isinstance(exc, redis.exceptions.RedisClusterException) and not isinstance(exc, CLUSTER_TRANSIENT):
        return isinstance(exc.__cause__, (redis.ConnectionError, redis.TimeoutError))
    return isinstance(exc, OUTAGE_ERRORS)


def connect(url: str) -> SyncClient:
    """A client for ``url``: redis-py's cluster client for ``redis+cluster://`` and
    ``rediss+cluster://``, a plain one otherwise.  A cluster client asks a seed for the slot
    map at once, so an unreachable cluster raises RelayConnectionError here."""
    if not is_cluster_url(url):
        return redis.Redis.from_url(url, **_options())
    address = parse_cluster_url(url)
    with translate_redis_errors(url):
        return redis.cluster.RedisCluster.from_url(
            address.node_url(), startup_nodes=_seeds(address, redis.cluster.ClusterNode), **_options()
        )


def connect_async(url: str) -> AsyncClient:
    """`connect` for asyncio; the cluster client reads the slot map at its first command."""
    if not is_cluster_url(url):
        return redis.asyncio.Redis.from_url(url, **_options())
    address = parse_cluster_url(url)
    return redis.asyncio.RedisCluster.from_url(
        address.node_url(), startup_nodes=_seeds(address, redis.asyncio.cluster.ClusterNode), **_options()
    )


def is_cluster(client: object) -> bool:
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.RedisCluster))


def _seeds(address: ClusterURL, node: Callable[[str, int], T]) -> list[T]:
    # redis-py takes the first seed from the URL itself (with the credentials and TLS
    # options); the others come as startup nodes.
    return [node(host, port) for host, port in address.seeds[1:]]


def _options() -> dict[str, Any]:
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
    except OUTAGE_ERRORS as exc:
        if isinstance(exc, redis.exceptions.AskError) and not is_cluster_url(url):
            raise RelayConnectionError(_cluster_node_hint(url)) from exc
        if not is_outage(exc):
            raise
        raise RelayConnectionError(f"Redis at {describe_url(url)} is unreachable: {exc}") from exc


def _cluster_node_hint(url: str) -> str:
    return (
        f"Redis at {describe_url(url)} is a node of a Redis Cluster (it answered MOVED for a key on another "
        "node): give the Redis URL as redis+cluster://host:port[,host:port...]"
    )


def refuse_cluster_node(client: SyncClient, url: str, field: str) -> None:
    """A standalone URL naming a cluster node would work for the keys of that node's slots
    and fail (MOVED) for all the others: refuse it at once, naming ``field``.  A server that
    refuses INFO (an ACL without it, a proxy) is left alone: MOVED is still explained."""
    if is_cluster(client):
        return
    try:
        enabled = client.info("cluster").get("cluster_enabled")
    except redis.ResponseError:
        return
    if enabled:
        raise ValidationError(field, _cluster_node_hint(url))


def run_cancel(client: SyncClient, url: str, request_id: str, ttl_s: int) -> CancelOutcome:
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


async def run_cancel_async(client: AsyncClient, url: str, request_id: str, ttl_s: int) -> CancelOutcome:
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
