"""Real servers and real workers for integration tests.

Each worker gets an embedded valkey server of its own (streams and Celery broker): workers
of different models never share a queue, and nothing touches the machine's shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
import redis.cluster

from cli.embedded import embedded_redis
from schemas.redis_util import connect
from tests.support.cluster import LocalCluster, local_cluster
from tests.support.fixtures import module_context
from workers.launcher import Stack, start_stack


@pytest.fixture(scope="session")
def server_factory() -> Iterator[object]:
    """``server_factory()`` starts one more embedded valkey server and returns its URL; all
    stop at the end of the session."""
    with ExitStack() as servers:
        yield lambda: servers.enter_context(embedded_redis())


def stack_of(url: str, model: str, extra: list[str], broker_url: str | None = None) -> Iterator[Stack]:
    stack = start_stack(url, model, extra, broker_url=broker_url)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def tiny_stack(server_factory: object, tiny_model_dir: Path) -> Iterator[Stack]:
    """A worker serving the tiny random model (fast; full of split UTF-8)."""
    yield from stack_of(
        server_factory(), str(tiny_model_dir), ["--concurrency", "8", "--max-running", "8", "--threads", "1"]
    )  # type: ignore[operator]


@pytest.fixture(scope="session")
def smol_stack(server_factory: object, smollm2_dir: Path) -> Iterator[Stack]:
    """A worker serving the real SmolLM2-135M-Instruct."""
    yield from stack_of(server_factory(), "HuggingFaceTB/SmolLM2-135M-Instruct", ["--concurrency", "8"])  # type: ignore[operator]


cluster = module_context(
    lambda: local_cluster(masters=3), "A 3-master Redis Cluster without replicas (valkey nodes) for the module's tests."
)


@pytest.fixture(scope="module")
def cluster_client(cluster: LocalCluster) -> Iterator[redis.cluster.RedisCluster]:
    """A client of the module's cluster, as the product makes it (``connect``)."""
    c = connect(cluster.url)
    assert isinstance(c, redis.cluster.RedisCluster)
    yield c
    c.close()
