"""kombu's Redis Sentinel transport, with a fix for a worker that stops when the master dies.

kombu 5.7: when the broker's master dies, Celery's consumer closes the broken connection and
its channel puts the unacknowledged messages back, which makes the channel build a new pool
from the connection's parameters; sometimes the connection's ``client`` is already gone and
that raises AttributeError.  Celery ignores only connection errors there, so the
AttributeError reached the worker as "Unrecoverable error" and the worker stopped (seen in
about one failover in four in tests/integration/test_sentinel.py).  Raised as a connection
error instead, it is ignored like the others: the consumer reconnects through the sentinels
to the promoted master.  The messages it could not put back stay in the unacked hash on the
broker, and kombu's sweep restores them after the visibility timeout (a running request's
lease keeps it from running twice).  Its channel also keeps one command client
(broker/redis_transport.py).
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from kombu.transport import redis as kombu_redis

from broker.redis_transport import OneClientMixin

TRANSPORT = "broker.sentinel_transport:SentinelTransport"
log = logging.getLogger(__name__)


class SentinelChannel(OneClientMixin, kombu_redis.SentinelChannel):
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:
            log.info("broker connection already closed: unacknowledged messages wait for the visibility timeout")
            raise redis.exceptions.ConnectionError("the broker connection is closed")
        return super()._connparams(asynchronous)


class SentinelTransport(kombu_redis.SentinelTransport):
    Channel = SentinelChannel
