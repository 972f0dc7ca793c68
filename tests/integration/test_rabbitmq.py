"""RabbitMQ as Celery's broker (the machine's, at amqp://guest:guest@127.0.0.1:5672//);
streams stay in Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from consumer import StreamReader
from producer import Producer
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration
AMQP = "amqp://guest:guest@127.0.0.1:5672//"


def test_pipeline_with_rabbitmq_broker(server_factory: object, tiny_model_dir: Path) -> None:
    url = server_factory()  # type: ignore[operator]
    queue = f"tokenrelay-test-{uuid.uuid4().hex[:8]}"  # never shared with another run's workers
    with WorkerProcess(
        redis_url=url, broker_url=AMQP, model=str(tiny_model_dir), extra_args=["--queue", queue, "--threads", "1"]
    ).wait_ready():
        producer, reader = Producer(url, AMQP), StreamReader(url)
        rid = producer.submit("over amqp", max_tokens=12, ignore_eos=True, queue=queue)
        result = reader.result(rid, timeout_s=60)
        producer.close()
        reader.close()
    assert result.finish_reasons == ["length"]
    assert result.usage is not None and result.usage.completion_tokens == 12
