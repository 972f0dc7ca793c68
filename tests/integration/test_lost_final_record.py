"""A request's final record lost after the worker had finished it (what a Redis Cluster
master that dies right after acknowledging the write can leave behind on its promoted
replica): a live worker finds the request again and ends its stream, exactly once.

Simulated on one standalone server: once the request has finished, its stream loses its last
entry and its meta goes back to ``running``, as on a replica that never got the last publish.
"""

from __future__ import annotations

import time

import pytest

from schemas import keys
from schemas.redis_util import connect
from tests.support.lost_write import lose_last_write
from workers.launcher import Stack

pytestmark = pytest.mark.integration

CONFIG = {"max_tokens": 40, "temperature": 1.0, "seed": 77, "ignore_eos": True}


def test_a_lost_final_record_is_written_again_by_a_takeover(tiny_stack: Stack) -> None:
    client = connect(tiny_stack.url)
    rid = tiny_stack.producer.submit("the end survives", **CONFIG)
    reference = tiny_stack.reader.result(rid, timeout_s=60)
    # The finished request is still in the lease index (due one lease later): a scan will
    # look at it before dropping it.
    assert client.zscore(keys.LEASES_KEY, rid) is not None
    lose_last_write(client, rid)
    assert client.zscore(keys.LEASES_KEY, rid) is not None  # no scan dropped it meanwhile

    records = list(tiny_stack.reader.stream(rid, timeout_s=60))

    assert [r.seq for r in records] == list(range(len(records)))
    assert [r.usage is not None for r in records].count(True) == 1 and records[-1].usage is not None
    assert [t for r in records for t in r.token_ids] == reference.token_ids[0]  # seeded: same draws
    assert records[-1].usage.completion_tokens == CONFIG["max_tokens"]
    meta = client.hgetall(keys.meta_key(rid))
    assert meta[b"status"] == b"finished" and meta[b"attempts"] == b"2"
    # Once a scan has seen the rewritten end, the entry leaves the index.
    deadline = time.monotonic() + 30
    while client.zscore(keys.LEASES_KEY, rid) is not None:
        assert time.monotonic() < deadline, "the ended request stayed in the lease index"
        time.sleep(0.2)
