"""RabbitMQ as the broker: a dead worker's request goes on within seconds there too, and a
broker killed and restarted mid-stream loses nothing.  The broker is a private node on free
ports (tests/support/rabbit.py); streams live in a private valkey."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest
from kombu import Connection

from consumer import StreamReader
from producer import Producer
from schemas.errors import RelayConnectionError
from tests.faults.conftest import AofServer, lease_holder, wait_for
from tests.faults.invariants import check_stream, raw_records, tokens_of
from tests.faults.test_takeover import CONFIG, PROMPT, TAKEOVER_LIMIT_S, _gap_after, _holder_first, _read_until
from tests.support.rabbit import RabbitServer, available
from workers.launcher import WorkerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.skipif(not available(), reason="rabbitmq-server is not installed on this machine"),
]


@pytest.fixture(scope="module")
def rabbit() -> Iterator[RabbitServer]:
    server = RabbitServer().start()
    yield server
    server.remove()


def ready_messages(broker_url: str, queue: str = "tokenrelay") -> int:
    """Messages waiting on the queue (not counting ones a live consumer holds unacked)."""
    with Connection(broker_url, connect_timeout=5) as conn:
        return int(conn.default_channel.queue_declare(queue, passive=True).message_count)


def test_kill_9_with_rabbitmq_broker_resumes_within_seconds(
    rabbit: RabbitServer, aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = aof_server.url
    producer, reader = Producer(url, rabbit.url), StreamReader(url)
    first = worker_factory(url, broker_url=rabbit.url)
    reference = reader.result(producer.submit(PROMPT, **CONFIG), timeout_s=120).token_ids
    peer = worker_factory(url, broker_url=rabbit.url)

    rid = producer.submit(PROMPT, **CONFIG)
    _read_until(reader, rid, 10)
    client = aof_server.client()
    victim, survivor = _holder_first([first, peer], lease_holder(client, rid))
    t0 = time.monotonic()
    victim.kill()  # waits for the death: every record after `last` is the survivor's
    last = raw_records(client, rid)[-1].entry_id
    took, _rest = _gap_after(reader, rid, last or "0", t0)

    assert took < TAKEOVER_LIMIT_S, f"takeover took {took:.1f}s; the survivor's log:\n{survivor.log_tail(60)}"
    records = raw_records(client, rid)
    check_stream(records, n=2)
    assert [tokens_of(records, i) for i in range(2)] == reference
    # RabbitMQ gave the dead worker's unacked message back at once; the peer, which already
    # holds the lease, settles that copy and acknowledges it: nothing is left on the queue.
    wait_for(lambda: ready_messages(rabbit.url) == 0, 10, "the redelivered message to be acknowledged")
    assert survivor.alive()


def test_rabbitmq_restart_mid_stream(
    rabbit: RabbitServer, aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = aof_server.url
    producer, reader = Producer(url, rabbit.url), StreamReader(url)
    worker = worker_factory(url, broker_url=rabbit.url)
    reference = reader.result(producer.submit(PROMPT, **CONFIG), timeout_s=120).token_ids
    rid = producer.submit(PROMPT, **CONFIG)
    _read_until(reader, rid, 10)

    rabbit.kill()
    # Broker down: submitting fails fast with the library's error, never a long hang.
    t0 = time.monotonic()
    with pytest.raises(RelayConnectionError):
        producer.submit("while the broker is down", max_tokens=4)
    assert time.monotonic() - t0 < 15
    rabbit.start()

    list(reader.stream(rid, timeout_s=60))  # the stream never depended on the broker
    records = raw_records(aof_server.client(), rid)
    check_stream(records, n=2)
    assert [tokens_of(records, i) for i in range(2)] == reference
    # The worker reconnects and serves new work; the message it could not acknowledge while
    # the broker was down comes back and is settled at once (its stream has ended).
    after = reader.result(producer.submit("after the restart", max_tokens=5, ignore_eos=True), timeout_s=90)
    assert after.finish_reasons == ["length"]
    wait_for(lambda: ready_messages(rabbit.url) == 0, 30, "the queue to drain")
    assert worker.alive()
