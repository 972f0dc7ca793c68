"""Make a finished request look as a promoted replica that never got its last publish would
(Redis replication is asynchronous: a master that dies right after acknowledging a write can
leave its replica without it)."""

from __future__ import annotations

import redis
import redis.cluster

from schemas import keys


def lose_last_write(client: redis.Redis | redis.cluster.RedisCluster, rid: str, ttl_s: int = 600) -> None:
    """The stream without its last entry (rebuilt: XDEL would keep the stream's last id, a
    replica that never got the entry does not) and the meta's status back to running, in one
    transaction (all of a request's keys share one slot)."""
    stream = keys.deltas_key(rid)
    kept = client.xrange(stream)[:-1]
    pipe = client.pipeline(transaction=True)
    pipe.delete(stream)
    for entry_id, fields in kept:
        pipe.xadd(stream, fields, id=entry_id)
    pipe.expire(stream, ttl_s)
    pipe.hset(keys.meta_key(rid), "status", "running")
    pipe.execute()
