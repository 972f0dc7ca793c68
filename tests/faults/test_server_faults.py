"""Redis restarted (AOF on) or connections killed mid-stream: the worker reconnects with
backoff and publishes what it held, readers reconnect and go on from their cursor; no record
is lost or repeated."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer import StreamReader
from producer import Producer
from schemas import Record
from tests.faults.conftest import AofServer
from tests.faults.invariants import check_stream, raw_records, tokens_of
from workers.launcher import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
CONFIG = {"max_tokens": 40, "temperature": 0.7, "seed": 11, "ignore_eos": True}


def _follow(reader: StreamReader, rid: str, out: list[Record], errors: list[BaseException]) -> threading.Thread:
    def run() -> None:
        try:
            out.extend(reader.stream(rid, timeout_s=60))
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t


@pytest.fixture
def smol_worker(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess], smollm2_dir: Path
) -> WorkerProcess:
    # SmolLM2 (~15 tokens/s here): slow enough that the faults land mid-stream.
    return worker_factory(aof_server.url, model=SMOL, env={"TOKENRELAY_TORCH_THREADS": "1"})


def test_redis_restart_mid_stream(aof_server: AofServer, smol_worker: WorkerProcess) -> None:
    producer, reader = Producer(aof_server.url), StreamReader(aof_server.url)
    reference = reader.result(producer.submit("Tell me a story.", **CONFIG), timeout_s=120)
    rid = producer.submit("Tell me a story.", **CONFIG)
    seen: list[Record] = []
    errors: list[BaseException] = []
    follower = _follow(reader, rid, seen, errors)
    while len(seen) < 5:
        time.sleep(0.02)
    aof_server.restart(down_s=1.5)  # shorter than the lease: the worker keeps its request
    follower.join(90)
    assert not errors, errors
    records = raw_records(aof_server.client(), rid)
    check_stream(records)
    assert seen == records  # the reader saw every record once, in order, across the restart
    assert tokens_of(records, 0) == reference.token_ids[0]
    assert smol_worker.alive()


def test_client_kill_mid_stream(aof_server: AofServer, smol_worker: WorkerProcess) -> None:
    producer, reader = Producer(aof_server.url), StreamReader(aof_server.url)
    rid = producer.submit("Tell me a story.", **CONFIG)
    seen: list[Record] = []
    errors: list[BaseException] = []
    follower = _follow(reader, rid, seen, errors)
    admin = aof_server.client()
    kills = 0
    while follower.is_alive() and kills < 5:
        time.sleep(0.4)
        kills += int(admin.client_kill_filter(_type="normal", skipme=True))  # every worker and reader connection
    follower.join(90)
    assert kills >= 2
    assert not errors, errors
    records = raw_records(admin, rid)
    check_stream(records)
    assert seen == records
    assert records[-1].usage is not None and records[-1].usage.completion_tokens == 40
    assert smol_worker.alive()
