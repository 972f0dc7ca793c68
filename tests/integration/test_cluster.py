"""The whole pipeline on a real 3-master Redis Cluster (valkey nodes started by the test).

Streams, metas, leases and the request index live on the cluster (``redis+cluster://``); the
Celery broker is a standalone embedded valkey (a cluster cannot be a broker).  Request ids
are picked so that their keys land on every master, so that each path (producer's register
pipeline, the worker's per-node step pipelines, both readers, cancel) crosses nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import redis.asyncio
import redis.cluster

from cli.healthcheck import fresh_beats
from consumer import AsyncStreamReader, StreamReader
from producer import Producer
from schemas import index, keys
from schemas.errors import RelayConnectionError, ValidationError, WorkerStartError
from schemas.records import Record, Usage
from schemas.redis_util import OUTAGE_ERRORS, connect, is_outage
from tests.integration.conftest import stack_of
from tests.support.cluster import LocalCluster, Node, local_cluster, tls
from tests.support.fixtures import own_server
from tests.support.gateway_process import gateway_process, wait_for_worker
from tests.support.tls_server import PASSWORD as TLS_PASSWORD
from tests.support.tls_server import binary as tls_binary
from tests.support.tls_server import make_certificates
from workers.launcher import Stack, WorkerProcess
from workers.lifecycle import Claim
from workers.publisher import StreamSink

pytestmark = pytest.mark.integration

NOBODY = "tokenrelay.cluster-test.nobody"  # a queue no worker consumes: requests stay queued
WORKER_ARGS = ["--concurrency", "8", "--max-running", "8", "--threads", "1"]
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


# ``cluster`` (3 masters, module-scoped) and ``cluster_client``: tests/integration/conftest.py.
broker = own_server("The Celery broker (a standalone valkey: a cluster cannot be one) of the module's worker.")


@pytest.fixture(scope="module")
def stack(cluster: LocalCluster, broker: str, tiny_model_dir: Path) -> Iterator[Stack]:
    yield from stack_of(cluster.url, str(tiny_model_dir), WORKER_ARGS, broker_url=broker)


def ids_on_every_master(cluster: LocalCluster, per_node: int = 2) -> list[str]:
    """Fresh request ids, ``per_node`` of them on each master's slots."""
    by_port: dict[int, list[str]] = {}
    while len(by_port) < 3 or min(len(v) for v in by_port.values()) < per_node:
        rid = keys.new_request_id()
        by_port.setdefault(cluster.primary_port_of(keys.deltas_key(rid)), []).append(rid)
    return [rid for ids in by_port.values() for rid in ids[:per_node]]


def check_complete(records: list[Record]) -> None:
    assert records, "no records"
    assert [r.seq for r in records] == list(range(len(records)))
    assert records[-1].usage is not None and records[-1].finish_reason == "length"
    assert sum(len(r.token_ids) for r in records) == records[-1].usage.completion_tokens


async def read_async(url: str, rids: list[str]) -> dict[str, list[Record]]:
    async with AsyncStreamReader(url) as reader:

        async def one(rid: str) -> list[Record]:
            return [r async for r in reader.stream(rid, timeout_s=60)]

        streams = await asyncio.gather(*(one(rid) for rid in rids))
    return dict(zip(rids, streams, strict=True))


def test_requests_on_every_master_stream_to_both_readers(
    stack: Stack, cluster: LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    chosen = ids_on_every_master(cluster)
    # Caller-chosen ids (the register script, then the index in a second pipeline) and
    # random ones (both in one pipeline that spans the request's node and the index's).
    rids = [stack.producer.submit("héllo 日本", request_id=rid, max_tokens=12, ignore_eos=True) for rid in chosen]
    rids += [stack.producer.submit(f"random {i}", max_tokens=12, ignore_eos=True) for i in range(3)]
    nodes = {cluster_client.get_node_from_key(keys.deltas_key(rid)).name for rid in rids}
    assert len(nodes) == 3  # every master holds some of the streams

    synced = {rid: list(stack.reader.stream(rid, timeout_s=60)) for rid in rids}
    asynced = asyncio.run(read_async(cluster.url, rids))
    for rid in rids:
        check_complete(synced[rid])
        assert asynced[rid] == synced[rid]
        assert [r.entry_id for r in asynced[rid]] == [r.entry_id for r in synced[rid]]
        assert cluster_client.hget(keys.meta_key(rid), "status") == b"finished"
    # Once more from a reader that starts late: everything is still there.
    with StreamReader(cluster.url) as late:
        assert late.result(rids[0], timeout_s=10).texts == ["".join(r.text for r in synced[rids[0]] if r.index == 0)]


def test_resume_after_an_entry_id(stack: Stack, cluster: LocalCluster) -> None:
    rid = stack.producer.submit("resume me", max_tokens=20, ignore_eos=True)
    records = list(stack.reader.stream(rid, timeout_s=60))
    check_complete(records)
    middle = records[len(records) // 2]
    assert middle.entry_id is not None
    with StreamReader(cluster.url) as reader:
        assert list(reader.stream(rid, after=middle.entry_id, timeout_s=10)) == records[len(records) // 2 + 1 :]

    async def resume() -> list[Record]:
        async with AsyncStreamReader(cluster.url) as reader:
            return [r async for r in reader.stream(rid, after=middle.entry_id or "", timeout_s=10)]

    assert asyncio.run(resume()) == records[len(records) // 2 + 1 :]


def test_cancel_of_a_running_request_on_each_master(stack: Stack, cluster: LocalCluster) -> None:
    rids = [
        stack.producer.submit("cancel me", request_id=rid, max_tokens=100_000, ignore_eos=True)
        for rid in ids_on_every_master(cluster, per_node=1)
    ]
    streams = [stack.reader.stream(rid, timeout_s=60) for rid in rids]
    for stream in streams:
        next(stream)  # it runs
    assert [stack.reader.cancel(rid) for rid in rids] == ["signalled"] * 3
    for stream in streams:
        rest = list(stream)
        assert rest[-1].finish_reason == "cancelled" and rest[-1].usage is not None


def test_cancel_of_a_queued_request_sync_and_async(stack: Stack, cluster: LocalCluster) -> None:
    first, second = (stack.producer.submit("never runs", max_tokens=5, n=2, queue=NOBODY) for _ in range(2))
    assert stack.producer.cancel(first) == "cancelled"
    records = list(stack.reader.stream(first, timeout_s=5))
    assert [(r.seq, r.finish_reason) for r in records] == [(0, "cancelled"), (1, "cancelled")]

    async def cancel_async() -> tuple[str, list[str | None]]:
        async with AsyncStreamReader(cluster.url) as reader:
            outcome = await reader.cancel(second)
            return outcome, (await reader.result(second, timeout_s=5)).finish_reasons

    assert asyncio.run(cancel_async()) == ("cancelled", ["cancelled", "cancelled"])
    assert stack.reader.cancel(first) == "ended"


def test_request_index_on_the_cluster(
    stack: Stack, cluster: LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    feed = stack.reader.events()  # from now on
    queued = stack.producer.submit("waits", max_tokens=5, queue=NOBODY)
    running = stack.producer.submit("runs long", max_tokens=100_000, ignore_eos=True)
    stream = stack.reader.stream(running, timeout_s=60)
    next(stream)
    active = {a.request_id: a.status for a in stack.reader.active(limit=1000)}
    assert active[queued] == "queued" and active[running] == "running"

    async def active_async() -> dict[str, str]:
        async with AsyncStreamReader(cluster.url) as reader:
            return {a.request_id: a.status for a in await reader.active(limit=1000)}

    assert asyncio.run(active_async())[running] == "running"
    stack.reader.cancel(running)
    list(stream)
    seen: dict[str, list[str]] = {}
    deadline = time.monotonic() + 30
    for ev in feed:
        if ev.request_id in (queued, running):
            seen.setdefault(ev.request_id, []).append(ev.status)
        if "cancelled" in seen.get(running, []) or time.monotonic() > deadline:
            break
    assert seen[queued][0] == "queued"
    assert seen[running][0] == "queued" and "running" in seen[running] and seen[running][-1] == "cancelled"
    assert cluster_client.zscore(keys.INDEX_RECENT_KEY, running) is not None
    assert cluster_client.zscore(keys.INDEX_RUNNING_KEY, running) is None
    # The global keys are single keys, each on the one slot of its own name.
    assert len({keys.INDEX_EVENTS_KEY, keys.INDEX_QUEUED_KEY, keys.INDEX_RUNNING_KEY, keys.LEASES_KEY}) == 4
    stack.producer.cancel(queued)


def test_worker_heartbeats_on_the_cluster(stack: Stack, cluster: LocalCluster) -> None:
    """What ``tokenrelay healthcheck`` and the gateway's /v1/models read."""
    beats = fresh_beats(cluster.url, time.time())
    assert str(stack.worker.pid) in {pid for _, pid, _ in beats}


def test_a_batch_on_the_cluster(stack: Stack) -> None:
    batch_id = stack.producer.submit_batch([f"item {i}" for i in range(6)], max_tokens=4, ignore_eos=True)
    results = list(stack.reader.batch_results(batch_id, timeout_s=60))
    assert len(results) == 6
    progress = stack.reader.batch(batch_id)
    assert progress.total == 6 and progress.done == 6
    # One that nobody runs, cancelled: a pipeline of cancel scripts over every master.
    waiting = stack.producer.submit_batch([f"wait {i}" for i in range(9)], max_tokens=4, queue=NOBODY)
    assert stack.producer.cancel_batch(waiting) == 9
    results = list(stack.reader.batch_results(waiting, timeout_s=10))
    assert len(results) == 9 and stack.reader.batch(waiting).cancelled == 9


def test_the_broker_is_never_the_cluster(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOKENRELAY_BROKER_URL", raising=False)
    with pytest.raises(ValidationError) as info:
        Producer(cluster.url, cluster.url)
    assert info.value.field == "broker_url" and "cannot be a Redis Cluster" in info.value.message
    with pytest.raises(ValidationError) as info:
        Producer(cluster.url)  # no broker given: the Redis URL cannot stand in for it
    assert info.value.field == "TOKENRELAY_BROKER_URL" and "broker URL" in info.value.message
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", cluster.url)
    with pytest.raises(ValidationError) as info:
        Producer(cluster.url)
    assert info.value.field == "TOKENRELAY_BROKER_URL" and "cannot be a Redis Cluster" in info.value.message


def test_an_unreachable_cluster_is_a_relay_connection_error() -> None:
    with pytest.raises(RelayConnectionError, match="unreachable"):
        connect("redis+cluster://127.0.0.1:1,127.0.0.1:2")

    async def read() -> None:
        async with AsyncStreamReader("redis+cluster://127.0.0.1:1") as reader:
            with contextlib.suppress(StopAsyncIteration):
                await anext(reader.stream("x", timeout_s=1, queue_timeout_s=1))

    with pytest.raises(RelayConnectionError):
        asyncio.run(read())


def test_index_builders_touch_one_key_per_command() -> None:
    """No index command mixes keys (they travel in pipelines with per-request commands, and a
    cluster routes each command by its one key)."""
    job_commands = index.on_running("r", "w", None, None, 1) + index.on_finished("r", "finished", None, None, "stop", 1)
    for command in job_commands:
        assert command[1].startswith(keys.PREFIX) and not any(
            str(arg).startswith(keys.PREFIX) for arg in command[2:]
        ), command


def test_the_gateway_on_the_cluster(stack: Stack, cluster: LocalCluster, broker: str) -> None:
    with gateway_process(cluster.url, broker) as base:
        model = wait_for_worker(base)
        assert httpx.get(base + "/readyz", timeout=10).json()["checks"]["redis"] == "ok"
        with openai.OpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
            chunks = list(
                client.chat.completions.create(
                    model=model,
                    messages=MESSAGES,
                    max_completion_tokens=10,
                    temperature=0,
                    stream=True,  # type: ignore[arg-type]
                )
            )
            completion = client.completions.create(model=model, prompt="Once", max_tokens=6, temperature=0)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stack.reader.result(stack.producer.submit(messages=MESSAGES, max_tokens=10, temperature=0)).text
    assert completion.usage is not None and completion.usage.completion_tokens == 6


# -- workers and nodes that die ----------------------------------------------------------------

SEEDED = {"max_tokens": 400, "temperature": 1.0, "seed": 99, "ignore_eos": True}


def read_until(reader: StreamReader, rid: str, count: int) -> list[Record]:
    got: list[Record] = []
    stream = reader.stream(rid, timeout_s=60)
    for record in stream:
        got.append(record)
        if len(got) >= count:
            break
    stream.close()
    return got


def tokens(records: list[Record]) -> list[int]:
    return [t for r in records for t in r.token_ids]


def test_a_dead_workers_request_is_taken_over_on_the_cluster(
    cluster: LocalCluster, server_factory: object, tiny_model_dir: Path
) -> None:
    broker = server_factory()  # type: ignore[operator]  # its own queue: the module's worker stays out
    workers = [
        WorkerProcess(cluster.url, broker, str(tiny_model_dir), ["--concurrency", "2", "--threads", "1"])
        for _ in range(2)
    ]
    try:
        for w in workers:
            w.wait_ready()
        with Producer(cluster.url, broker) as producer, StreamReader(cluster.url) as reader:
            reference = tokens(list(reader.stream(producer.submit("taken over", **SEEDED), timeout_s=60)))
            rid = producer.submit("taken over", **SEEDED)
            seen = read_until(reader, rid, 5)
            holder = (reader._client.get(keys.lease_key(rid)) or b"").decode()
            victim = next(w for w in workers if holder.startswith(f"tokenrelay-{w.pid}-"))
            victim.kill()
            rest = list(reader.stream(rid, after=seen[-1].entry_id or "", timeout_s=60))
            records = seen + rest
            assert [r.seq for r in records] == list(range(len(records)))
            assert tokens(records) == reference  # resumed from the stream, same seeded tokens
            assert int(reader._client.hget(keys.meta_key(rid), "attempts") or 0) == 2
    finally:
        for w in workers:
            w.kill()


@dataclass
class MidStream:
    """A seeded request on a cluster with replicas, read up to its 5th record."""

    cluster: LocalCluster
    worker: WorkerProcess
    reader: StreamReader
    rid: str
    reference: list[int]  # the tokens of an undisturbed run of the same request
    seen: list[Record]  # the records read so far
    victim: Node  # the master of the request's slot

    def read_to_the_end(self) -> int:
        """Read the rest of the stream; check it whole (every seq once, a final record with
        usage) and equal to the undisturbed run; return how often the request was claimed."""
        rest = list(self.reader.stream(self.rid, after=self.seen[-1].entry_id or "", timeout_s=60))
        records = self.seen + rest
        assert [r.seq for r in records] == list(range(len(records)))
        assert records[-1].usage is not None and tokens(records) == self.reference
        return int(self.reader._client.hget(keys.meta_key(self.rid), "attempts") or 0)


@contextlib.contextmanager
def mid_stream_on_replicas(server_factory: object, tiny_model_dir: Path, prompt: str) -> Iterator[MidStream]:
    """3 masters + 3 replicas (cluster-node-timeout 2 s), one worker, and a seeded 1,500-token
    request on them whose first 5 records were read; the worker is killed afterwards."""
    broker = server_factory()  # type: ignore[operator]
    with local_cluster(masters=3, replicas=1) as cluster:
        worker = WorkerProcess(cluster.url, broker, str(tiny_model_dir), ["--concurrency", "2", "--threads", "1"])
        try:
            worker.wait_ready()
            with Producer(cluster.url, broker) as producer, StreamReader(cluster.url) as reader:
                config = {**SEEDED, "max_tokens": 1500}
                reference = tokens(list(reader.stream(producer.submit(prompt, **config), timeout_s=120)))
                rid = producer.submit(prompt, **config)
                seen = read_until(reader, rid, 5)
                victim = cluster.node(cluster.primary_port_of(keys.deltas_key(rid)))
                yield MidStream(cluster, worker, reader, rid, reference, seen, victim)
        finally:
            worker.kill()


@pytest.mark.slow
def test_a_master_killed_mid_stream_fails_over_and_the_stream_ends_whole(
    server_factory: object, tiny_model_dir: Path
) -> None:
    """SIGKILL the master of a running request's slot.  Its replica takes over the slot; the
    worker and the reader retry through the failover, and the stream ends with every record,
    equal to an undisturbed run."""
    with mid_stream_on_replicas(server_factory, tiny_model_dir, "failover") as run:
        killed_at = time.monotonic()
        run.victim.kill()
        attempts = run.read_to_the_end()
        resumed_s = time.monotonic() - killed_at
        assert run.cluster.primary_port_of(keys.deltas_key(run.rid)) != run.victim.port  # the replica took over
        print(f"failover: stream whole after {resumed_s:.1f}s, {attempts} attempt(s)")
        assert run.worker.alive()


def test_injected_cluster_clients_are_labelled_and_checked(cluster: LocalCluster) -> None:
    port = cluster.nodes[0].port
    with contextlib.closing(redis.cluster.RedisCluster(host="127.0.0.1", port=port)) as blocking:
        assert StreamReader(client=blocking).label.startswith("redis+cluster://127.0.0.1:")
    text = redis.cluster.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
    with contextlib.closing(text), pytest.raises(ValidationError, match="decode_responses"):
        StreamReader(client=text)

    async def check_async() -> None:
        async with redis.asyncio.RedisCluster(host="127.0.0.1", port=port) as client:
            label = AsyncStreamReader(client=client).label  # the seeds, or every node once it has asked
            assert label.startswith("redis+cluster://") and f"127.0.0.1:{port}" in label
        text = redis.asyncio.RedisCluster(host="127.0.0.1", port=port, decode_responses=True)
        async with text:
            with pytest.raises(ValidationError, match="decode_responses"):
                AsyncStreamReader(client=text)

    asyncio.run(check_async())


def evalsha_calls(cluster: LocalCluster) -> dict[int, int]:
    out = {}
    for node in cluster.nodes:
        with contextlib.closing(node.client()) as c:
            out[node.port] = int(c.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))
    return out


def test_the_sinks_step_is_one_script_per_request_on_its_node(
    cluster: LocalCluster, cluster_client: redis.cluster.RedisCluster
) -> None:
    """20 records each for 3 requests on 3 masters: one publish script per request, on the
    request's own master (the records are its arguments), all sent as one pipeline."""
    sink = StreamSink(cluster_client, 120, cluster.url, worker_id="sink-test", lease_s=5.0, max_backoff_s=0.2)
    rids = ids_on_every_master(cluster, per_node=1)
    for rid in rids:
        claim = sink.claim(rid, 120)
        assert claim.kind is Claim.CLAIMED
        sink.hold(rid, claim.owner, sink.read_stream(rid).last_id, 120)
    cluster_client.script_flush()  # the step finds NOSCRIPT on every master: loaded everywhere, sent again
    sink.publish([(rid, Record(seq=0, text="x", token_ids=[1])) for rid in rids])
    before = evalsha_calls(cluster)
    outcome = sink.publish([(rid, Record(seq=i, text="x", token_ids=[i])) for rid in rids for i in range(1, 21)])
    after = evalsha_calls(cluster)
    assert not outcome.lost and not outcome.conflicts
    masters = {cluster.primary_port_of(keys.deltas_key(rid)) for rid in rids}
    assert {port: after[port] - before[port] for port in masters} == dict.fromkeys(masters, 1)
    assert all(cluster_client.xlen(keys.deltas_key(rid)) == 21 for rid in rids)
    # Another worker's claim reads the stream in the same trip (redis-py's parsed XRANGE here).
    other = StreamSink(cluster_client, 120, cluster.url, worker_id="other", lease_s=5.0, max_backoff_s=0.2)
    claim, state = other.claim_and_read(rids[0], 120)
    assert claim.kind is Claim.OWNED and state.last_id == "21-0" and state == sink.read_stream(rids[0])
    # Ended, so that no live worker's scan tries to take them over.
    sink.publish([(rid, Record(seq=21, finish_reason="stop", usage=Usage())) for rid in rids])
    assert all(cluster_client.hget(keys.meta_key(rid), "status") == b"finished" for rid in rids)


@pytest.mark.skipif(tls_binary() is None, reason="no redis-server binary with TLS on this machine")
def test_the_pipeline_on_a_tls_cluster_with_a_password(
    server_factory: object, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """rediss+cluster://: every node (the seeds and those found in the slot map) is reached
    over TLS with the URL's CA and password; a client trusting another CA is refused."""
    make_certificates(tmp_path)
    broker = server_factory()  # type: ignore[operator]
    with local_cluster(masters=3, flavor=tls(tmp_path, TLS_PASSWORD)) as cluster:
        assert cluster.url.startswith("rediss+cluster://")
        with WorkerProcess(cluster.url, broker, str(tiny_model_dir), WORKER_ARGS) as worker:
            worker.wait_ready()
            with Producer(cluster.url, broker) as producer, StreamReader(cluster.url) as reader:
                rids = [producer.submit(f"tls {i}", max_tokens=8, ignore_eos=True) for i in range(6)]
                assert len({reader._client.get_node_from_key(keys.deltas_key(r)).name for r in rids}) > 1
                synced = {rid: list(reader.stream(rid, timeout_s=60)) for rid in rids}
            assert asyncio.run(read_async(cluster.url, rids)) == synced
            for records in synced.values():
                check_complete(records)
        wrong_ca = cluster.url.replace("ca.pem", "other.pem")
        with pytest.raises(RelayConnectionError) as info:
            connect(wrong_ca)
        assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and TLS_PASSWORD not in str(info.value)


@pytest.mark.slow
def test_a_frozen_master_that_comes_back_demoted(server_factory: object, tiny_model_dir: Path) -> None:
    """The partition case on purpose: SIGSTOP the master of a running request's slot (cut
    off), wait until its replica is promoted, SIGCONT it.  The old master rejoins as a replica
    (dropping anything it still accepted; in our runs it accepted nothing); the worker, blocked
    on the frozen node meanwhile, goes on at the new master, and the stream ends whole and equal
    to an undisturbed run."""
    with mid_stream_on_replicas(server_factory, tiny_model_dir, "partition") as run:
        key = keys.deltas_key(run.rid)
        frozen_at = time.monotonic()
        run.victim.freeze()
        try:
            while run.cluster.primary_port_of(key) == run.victim.port:
                time.sleep(0.1)
            promoted_s = time.monotonic() - frozen_at
        finally:
            run.victim.thaw()
        attempts = run.read_to_the_end()
        ended_s = time.monotonic() - frozen_at
        print(f"partition: promoted after {promoted_s:.1f}s, stream whole after {ended_s:.1f}s, {attempts} attempt(s)")


def test_a_plain_url_to_a_cluster_node_is_explained(cluster: LocalCluster, broker: str, tiny_model_dir: Path) -> None:
    """What a new user tries first: redis://<a node>.  The worker refuses to start, naming the
    setting; a producer whose key lands on another node says to use redis+cluster://."""
    plain_url = f"redis://127.0.0.1:{cluster.nodes[0].port}/0"
    worker = WorkerProcess(plain_url, broker, str(tiny_model_dir), WORKER_ARGS)
    with pytest.raises(WorkerStartError, match=r"TOKENRELAY_REDIS_URL.*redis\+cluster://"):
        worker.wait_ready(timeout_s=60)
    worker.kill()
    port = cluster.nodes[0].port
    elsewhere = next(r for r in ids_on_every_master(cluster, 1) if cluster.primary_port_of(keys.meta_key(r)) != port)
    with Producer(plain_url, broker) as producer, pytest.raises(RelayConnectionError, match=r"redis\+cluster://"):
        producer.submit("misrouted", request_id=elsewhere, max_tokens=2, queue=NOBODY)


def test_a_dead_node_makes_the_sinks_trip_raise_never_a_refused_reply() -> None:
    """A step whose node is down raises an outage error (so it is sent again) and never comes
    back as a reply that reads as "refused for good" (which would drop the request).  redis-py
    8.1 raises here by itself; the sink also raises one that its cluster pipeline leaves in the
    reply list (raise_on_error=False does that after its per-command retries)."""
    with local_cluster(masters=3) as cluster:
        client = connect(cluster.url)
        assert isinstance(client, redis.cluster.RedisCluster)
        try:
            sink = StreamSink(client, 120, cluster.url, worker_id="dead-node-test", max_backoff_s=0.2)
            rids = ids_on_every_master(cluster, per_node=1)
            dead = cluster.primary_port_of(keys.meta_key(rids[0]))
            cluster.node(dead).kill()
            commands = [("HSET", keys.meta_key(rid), "probe", "1") for rid in rids]
            with pytest.raises(OUTAGE_ERRORS) as info:
                sink._round_trip(commands)
            assert is_outage(info.value)
        finally:
            client.close()
