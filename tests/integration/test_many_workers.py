"""Many worker processes on a Redis Cluster: several on one queue share the work, and
per-model queues route each model's requests only to the workers that serve it.

Three workers, streams on a 3-master cluster, one standalone valkey as the broker: two serve
model ``alpha`` (one queue, two consumers), one serves ``beta`` (the same tiny model under
another folder name, so another model name and queue).  Each request's meta says which worker
claimed it (``worker``) and how often it was claimed (``attempts``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis.cluster

from consumer import StreamReader
from producer import Producer
from schemas import keys
from schemas.job import queue_for_model
from schemas.records import Record
from tests.support.cluster import LocalCluster
from tests.support.lost_write import lose_last_write
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

# Four slots each: with 20 requests queued at once, one worker cannot take them all.
WORKER_ARGS = ["--concurrency", "4", "--max-running", "4", "--threads", "1"]
CONFIG = {"max_tokens": 48, "temperature": 1.0, "ignore_eos": True}
# ``cluster`` (3 masters, module-scoped) and ``cluster_client``: tests/integration/conftest.py.


@pytest.fixture(scope="module")
def models(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Two model names for one tiny model: folders ``alpha`` and ``beta``."""
    root = tmp_path_factory.mktemp("models")
    for name in ("alpha", "beta"):
        (root / name).symlink_to(tiny_model_dir, target_is_directory=True)
    return {name: str(root / name) for name in ("alpha", "beta")}


@pytest.fixture(scope="module")
def workers(
    cluster: LocalCluster, server_factory: object, models: dict[str, str]
) -> Iterator[tuple[str, dict[str, list[WorkerProcess]]]]:
    broker: str = server_factory()  # type: ignore[operator]
    started = {
        "alpha": [WorkerProcess(cluster.url, broker, models["alpha"], WORKER_ARGS) for _ in range(2)],
        "beta": [WorkerProcess(cluster.url, broker, models["beta"], WORKER_ARGS)],
    }
    try:
        for group in started.values():
            for w in group:
                w.wait_ready()
        yield broker, started
    finally:
        for group in started.values():
            for w in group:
                w.stop()


def worker_of(client: redis.cluster.RedisCluster, rid: str) -> int:
    """The pid of the worker that claimed the request (worker ids: tokenrelay-<pid>-<random>@host)."""
    meta = client.hgetall(keys.meta_key(rid))
    assert meta.get(b"attempts") == b"1", meta  # claimed once: no worker took another's request
    return int(meta[b"worker"].decode().split("-")[1])


def check_whole(records: list[Record]) -> None:
    assert [r.seq for r in records] == list(range(len(records)))
    assert [r.usage is not None for r in records].count(True) == 1 and records[-1].usage is not None
    assert sum(len(r.token_ids) for r in records) == records[-1].usage.completion_tokens == CONFIG["max_tokens"]


def submit_and_read(url: str, broker: str, model: str, count: int) -> list[str]:
    with Producer(url, broker) as producer, StreamReader(url) as reader:
        rids = [producer.submit(f"request {i} for {model}", model=model, seed=i, **CONFIG) for i in range(count)]
        for rid in rids:
            check_whole(list(reader.stream(rid, timeout_s=120)))
    return rids


def test_two_workers_on_one_queue_share_the_requests(
    cluster: LocalCluster,
    workers: tuple[str, dict[str, list[WorkerProcess]]],
    models: dict[str, str],
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    broker, started = workers
    rids = submit_and_read(cluster.url, broker, models["alpha"], 20)
    served = [worker_of(cluster_client, rid) for rid in rids]
    alpha = {w.pid for w in started["alpha"]}
    assert set(served) == alpha, f"served by {served}, alpha workers {alpha}"
    assert min(served.count(pid) for pid in alpha) >= 4, served  # both took a fair part of the queue


def test_each_model_goes_only_to_its_workers(
    cluster: LocalCluster,
    workers: tuple[str, dict[str, list[WorkerProcess]]],
    models: dict[str, str],
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    broker, started = workers
    assert queue_for_model(models["alpha"]) != queue_for_model(models["beta"])
    for name, other in (("beta", "alpha"), ("alpha", "beta")):
        rids = submit_and_read(cluster.url, broker, models[name], 6)
        served = {worker_of(cluster_client, rid) for rid in rids}
        assert served <= {w.pid for w in started[name]}, (name, served)
        assert not served & {w.pid for w in started[other]}


def test_a_final_record_lost_on_its_master_is_written_again(
    cluster: LocalCluster,
    workers: tuple[str, dict[str, list[WorkerProcess]]],
    models: dict[str, str],
    cluster_client: redis.cluster.RedisCluster,
) -> None:
    """The README's failover case: the request's master loses its last publish (the final
    record and the meta's final status) while the lease index, on another node, keeps what it
    had.  A worker finds the request again and ends it, with exactly one final record."""
    broker, _started = workers
    leases_node = cluster.primary_port_of(keys.LEASES_KEY)
    rid = keys.new_request_id()
    while cluster.primary_port_of(keys.deltas_key(rid)) == leases_node:
        rid = keys.new_request_id()  # the request's keys on another master than the index
    with Producer(cluster.url, broker) as producer, StreamReader(cluster.url) as reader:
        producer.submit("lost on failover", model=models["alpha"], request_id=rid, seed=5, **CONFIG)
        reference = reader.result(rid, timeout_s=60)
        lose_last_write(cluster_client, rid)
        records = list(reader.stream(rid, timeout_s=60))
    check_whole(records)
    assert [t for r in records for t in r.token_ids] == reference.token_ids[0]  # seeded: same draws
    meta = cluster_client.hgetall(keys.meta_key(rid))
    assert meta[b"status"] == b"finished" and meta[b"attempts"] == b"2"


def test_the_lease_index_drains_once_every_request_ended(
    workers: tuple[str, dict[str, list[WorkerProcess]]], cluster_client: redis.cluster.RedisCluster
) -> None:
    """Finished requests stay in the lease index until a scan sees their end (one lease
    later); with three workers sweeping, nothing is left behind and nothing re-claimed."""
    deadline = time.monotonic() + 30
    while cluster_client.zcard(keys.LEASES_KEY):
        assert time.monotonic() < deadline, cluster_client.zrange(keys.LEASES_KEY, 0, 5, withscores=True)
        time.sleep(0.5)
