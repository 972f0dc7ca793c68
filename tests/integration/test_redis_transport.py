"""broker/redis_transport.py against a real Redis: a channel keeps one command client over its
current pool, and messages published and consumed through it are intact."""

from __future__ import annotations

import pytest
from kombu import Connection, Queue

from broker.app import make_celery
from broker.redis_transport import TRANSPORT, Channel
from schemas.job import TASK_NAME

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def url(server_factory: object) -> str:
    return str(server_factory())  # type: ignore[operator]


def test_a_channel_keeps_one_command_client_until_its_pool_changes(url: str) -> None:
    app = make_celery(url, url)
    with app.connection_for_write() as conn:
        assert conn.transport_cls == TRANSPORT
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        first = channel._create_client()
        assert channel._create_client() is first and first.connection_pool is channel.pool
        assert channel._create_client(asynchronous=True) is not first  # BRPOP's client is kombu's own
        channel._disconnect_pools()  # what a reconnection or a fork does
        second = channel._create_client()
        assert second is not first and second.connection_pool is channel.pool
        assert second.ping()


def test_tasks_sent_through_it_arrive_whole_and_in_order(url: str) -> None:
    app = make_celery(url, url)
    sent = [{"request_id": f"r{i}", "n": i} for i in range(50)]
    for job in sent:
        app.send_task(TASK_NAME, args=[job], queue="transport-test", argsrepr="[job]")
    got = []
    with Connection(url, transport=TRANSPORT) as conn:
        queue = conn.SimpleQueue(Queue("transport-test", routing_key="transport-test"))
        for _ in sent:
            message = queue.get(timeout=5)
            got.append(message.payload[0][0])
            message.ack()
        queue.close()
    assert got == sent
    app.close()
