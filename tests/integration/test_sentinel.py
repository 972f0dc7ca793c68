"""Redis Sentinel as the Celery broker: the whole pipeline submits through ``sentinel://``
URLs (kombu asks the sentinel for the master), and goes on after the sentinel has failed the
broker's master over to its replica.

Streams live on a separate standalone server: Sentinel is for the broker (a queue is one list
on one master); streams scale out on a Redis Cluster instead.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from consumer import StreamReader
from producer import Producer
from tests.support.fixtures import module_context, own_server
from tests.support.gateway_process import gateway_process
from tests.support.sentinel import SentinelSetup, local_sentinel
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

CONFIG = {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True}


sentinel = module_context(local_sentinel, "A sentinel watching the broker's master and its replica.")
streams = own_server("The standalone server of the streams (the sentinel's servers are the broker).")


@pytest.fixture(scope="module")
def worker(sentinel: SentinelSetup, streams: str, tiny_model_dir: Path) -> Iterator[WorkerProcess]:
    args = ["--concurrency", "2", "--max-running", "2", "--threads", "1"]
    with WorkerProcess(streams, sentinel.broker_url, str(tiny_model_dir), args).wait_ready() as w:
        yield w


def generate(streams: str, broker: str, prompt: str) -> list[int]:
    with Producer(streams, broker) as producer, StreamReader(streams) as reader:
        result = reader.result(producer.submit(prompt, **CONFIG), timeout_s=90)
    assert result.usage is not None and result.usage.completion_tokens == CONFIG["max_tokens"]
    return result.token_ids[0]


def test_the_pipeline_through_a_sentinel_broker(sentinel: SentinelSetup, streams: str, worker: WorkerProcess) -> None:
    pushes_before = _pushes(sentinel)
    generate(streams, sentinel.broker_url, "through the sentinel")
    assert _pushes(sentinel) > pushes_before  # the task went to the master the sentinel named
    assert worker.alive()


def test_the_gateway_submits_through_a_sentinel_broker_and_is_ready(
    sentinel: SentinelSetup, streams: str, worker: WorkerProcess
) -> None:
    with gateway_process(streams, sentinel.broker_url) as base, httpx.Client(base_url=base, timeout=60) as http:
        ready = http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"]["broker"] == "ok"
        reply = http.post("/v1/completions", json={"prompt": "via the gateway", **CONFIG})
        assert reply.status_code == 200, reply.text
        assert reply.json()["usage"]["completion_tokens"] == CONFIG["max_tokens"]


def test_the_broker_master_fails_over_and_the_pipeline_goes_on(
    sentinel: SentinelSetup, streams: str, worker: WorkerProcess
) -> None:
    before = generate(streams, sentinel.broker_url, "before the failover")
    os.kill(sentinel.master.pid, signal.SIGKILL)  # type: ignore[arg-type]
    sentinel.wait_for("the replica's promotion", lambda: sentinel.serves_master_on(sentinel.replica.port))
    # The same request again, through the promoted master, to the same worker: it reconnected
    # through the sentinel (broker/sentinel_transport.py keeps it alive while it does).
    after = generate(streams, sentinel.broker_url, "before the failover")
    assert after == before  # greedy: the same tokens, now queued through the new master
    assert _pushes(sentinel, sentinel.replica.port) > 0
    assert worker.alive()


def _pushes(sentinel: SentinelSetup, port: int | None = None) -> int:
    """LPUSH calls the master (or the server on ``port``) has served: how kombu publishes."""
    client = redis.Redis("127.0.0.1", port or sentinel.master.port, socket_timeout=5)
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_lpush", {}).get("calls", 0))
