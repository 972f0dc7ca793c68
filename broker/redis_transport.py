"""kombu's Redis transport with one command client per channel instead of one per command.

kombu 5.7 builds a new ``redis.Redis`` for each publish, acknowledgement and piece of
unacked bookkeeping (``Channel.conn_or_acquire`` -> ``_create_client``), and redis-py's
constructor copies its ~170 response callbacks every time: 0.24 ms of a 0.69 ms
``send_task`` on a 2-core Xeon, and the same again on the worker's delivery path (each
received message writes the unacked hash through a fresh client, each acknowledgement
removes it through another).  The client holds no connection of its own (every command
borrows one from the channel's pool and gives it back), so one per channel serves every
thread as well as many do.  It is built again whenever the channel's pool is replaced (a
reconnection, a fork), so it never outlives the pool it borrows from.  The asynchronous
client that waits in ``BRPOP`` is kombu's own, unchanged.

`make_celery` picks these classes for ``redis://`` brokers, and the Sentinel channel of
broker/sentinel_transport.py mixes the same client in; ``rediss://`` and ``redis+socket://``
keep kombu's own (their scheme decides kombu's transport options).
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "broker.redis_transport:Transport"


class OneClientMixin:
    """``_create_client`` for commands: the channel's one client over its current pool."""

    pool: Any
    _command_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[misc]
        pool, client = self.pool, self._command_client
        if client is None or client.connection_pool is not pool:
            client = self._command_client = super()._create_client()  # type: ignore[misc]
        return client


class Channel(OneClientMixin, kombu_redis.Channel):
    pass


class Transport(kombu_redis.Transport):
    Channel = Channel
