"""Client set-up shared by both shells.  Password masking and error translation live in
:mod:`schemas.redis_util` (shared with producer and workers); this adds what only a reader needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from schemas.errors import ValidationError
from schemas.redis_util import describe_url, is_cluster


def describe(url: str | None, client: Any) -> str:
    """What error messages call the server: the masked URL, or for an injected client a
    URL-like label built from its connection settings (never the password)."""
    if url:
        return describe_url(url)
    if is_cluster(client):
        return "redis+cluster://" + ",".join(client.nodes_manager.startup_nodes)
    kwargs = _connection_kwargs(client)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={kwargs.get('db', 0)}"
    return f"redis://{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"


def check_binary(client: Any) -> None:
    """Records are msgpack bytes: a client that decodes responses to str would corrupt them."""
    if _connection_kwargs(client).get("decode_responses"):
        raise ValidationError("client", "the Redis client must be created with decode_responses=False")


def _connection_kwargs(client: Any) -> Mapping[str, Any]:
    """The keyword arguments a client's connections are made with: a standalone client keeps
    them on its pool, redis-py's cluster clients on the client (asyncio) or on its nodes
    manager (blocking)."""
    pool = getattr(client, "connection_pool", None)
    if pool is not None:
        return pool.connection_kwargs
    kwargs = getattr(client, "connection_kwargs", None)
    return kwargs if kwargs is not None else client.nodes_manager.connection_kwargs
