"""Real servers and real workers for integration tests.

Each worker gets an embedded valkey server of its own (streams and Celery broker): workers
of different models never share a queue, and nothing touches the machine's shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.embedded import embedded_redis
from consumer import AsyncStreamReader, StreamReader
from producer import Producer
from workers.launcher import WorkerProcess


@dataclass
class Stack:
    url: str
    worker: WorkerProcess
    producer: Producer
    reader: StreamReader

    def async_reader(self) -> AsyncStreamReader:
        return AsyncStreamReader(self.url)


@pytest.fixture(scope="session")
def server_factory() -> Iterator[object]:
    """``server_factory()`` starts one more embedded valkey server and returns its URL; all
    stop at the end of the session."""
    with ExitStack() as servers:
        yield lambda: servers.enter_context(embedded_redis())


def stack_of(url: str, model: str, extra: list[str]) -> Iterator[Stack]:
    worker = WorkerProcess(redis_url=url, model=model, extra_args=extra).wait_ready()
    producer, reader = Producer(url), StreamReader(url)
    try:
        yield Stack(url, worker, producer, reader)
    finally:
        producer.close()
        reader.close()
        worker.stop()


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
