"""Submit and cancel against a real embedded valkey server (streams and broker), no worker:
the requests go to a queue nobody consumes, so they stay queued for as long as a test wants."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from cli.main import main as cli_main
from consumer import AsyncStreamReader, RequestNotFound, StreamReader
from producer import Producer
from schemas import keys
from schemas.errors import RelayConnectionError, ValidationError
from schemas.job import Job
from schemas.records import Record, Usage, encode

pytestmark = pytest.mark.integration
NOBODY = "tokenrelay.test-nobody"  # a queue no worker consumes


@pytest.fixture(scope="module")
def url(server_factory: object) -> str:
    return server_factory()  # type: ignore[operator]


@pytest.fixture(scope="module")
def client(url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(url)
    yield c
    c.close()


@pytest.fixture(scope="module")
def producer(url: str) -> Iterator[Producer]:
    with Producer(url) as p:
        yield p


def queued_tasks(client: redis.Redis, queue: str = NOBODY) -> int:
    return int(client.llen(queue))


def test_meta_at_submit(producer: Producer, client: redis.Redis) -> None:
    rid = producer.submit("hello", max_tokens=5, n=2, queue=NOBODY, model="tiny")
    raw: dict[bytes, bytes] = client.hgetall(keys.meta_key(rid))  # type: ignore[assignment]
    meta = {k.decode(): v.decode() for k, v in raw.items()}
    assert meta["status"] == "queued" and meta["n"] == "2" and meta["model"] == "tiny"
    assert abs(float(meta["submitted_at"]) - time.time()) < 60
    job = Job.from_dict(json.loads(meta["job"]))  # what a takeover restarts the request from
    assert job.request_id == rid and job.prompt == "hello" and job.config.n == 2
    assert 3500 < client.ttl(keys.meta_key(rid)) <= 3600


def test_producer_ttl_is_honoured(url: str, client: redis.Redis) -> None:
    with Producer(url, ttl_s=7) as short:
        rid = short.submit("short-lived", max_tokens=3, queue=NOBODY)
        assert 0 < client.ttl(keys.meta_key(rid)) <= 7
        assert client.hget(keys.meta_key(rid), "ttl_s") == b"7"
        # Any canceller (a reader knows no producer's ttl_s) uses the request's own TTL.
        with StreamReader(url) as reader:
            assert reader.cancel(rid) == "cancelled"
    for key in (keys.meta_key(rid), keys.deltas_key(rid), keys.cancel_key(rid)):
        assert 0 < client.ttl(key) <= 7, key


def test_idempotent_submit_and_a_different_job_under_a_used_id(producer: Producer, client: redis.Redis) -> None:
    queue = f"{NOBODY}.idem"
    rid = "caller-chosen-1"
    assert producer.submit("same job", request_id=rid, max_tokens=4, queue=queue) == rid
    assert producer.submit("same job", request_id=rid, max_tokens=4, queue=queue) == rid
    assert queued_tasks(client, queue) == 1  # enqueued once
    for change in ({"prompt": "another job"}, {"max_tokens": 5}, {"model": "other"}):
        args = {"prompt": "same job", "max_tokens": 4, **change}
        with pytest.raises(ValidationError) as info:
            producer.submit(args.pop("prompt"), request_id=rid, queue=queue, **args)  # type: ignore[arg-type]
        assert info.value.field == "request_id"
    assert queued_tasks(client, queue) == 1
    assert json.loads(client.hget(keys.meta_key(rid), "job") or b"")["prompt"] == "same job"


def test_broker_down_raises_quickly_and_frees_the_id(url: str, client: redis.Redis) -> None:
    with Producer(url, broker_url="redis://127.0.0.1:1/0") as down:  # nothing listens on port 1
        start = time.monotonic()
        with pytest.raises(RelayConnectionError):
            down.submit("lost", request_id="broker-down-1", max_tokens=3)
        assert time.monotonic() - start < 5
    assert not client.exists(keys.meta_key("broker-down-1"))


def test_cancel_of_an_unknown_id(
    producer: Producer, url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    rid = "never-submitted-1"
    with pytest.raises(RequestNotFound):
        producer.cancel(rid)
    with StreamReader(url) as reader, pytest.raises(RequestNotFound):
        reader.cancel(rid)
    assert not client.exists(keys.cancel_key(rid))
    assert cli_main(["cancel", rid, "--redis-url", url]) == 1
    assert "not found" in capsys.readouterr().err


def test_cancel_of_a_queued_request_ends_it_at_once(producer: Producer, url: str, client: redis.Redis) -> None:
    rid = producer.submit("never runs", max_tokens=50, n=3, queue=NOBODY)
    time.sleep(0.05)
    assert producer.cancel(rid) == "cancelled"
    with StreamReader(url) as reader:
        records = list(reader.stream(rid, timeout_s=5))
        assert reader.cancel(rid) == "ended"  # a second cancel is a no-op
    assert [(r.seq, r.index, r.finish_reason, r.text, r.token_ids) for r in records] == [
        (0, 0, "cancelled", "", []),
        (1, 1, "cancelled", "", []),
        (2, 2, "cancelled", "", []),
    ]
    assert [r.entry_id for r in records] == ["1-0", "2-0", "3-0"]
    usage = records[-1].usage
    assert usage is not None and usage.completion_tokens == 0 and 0.05 <= usage.queue_s < 5
    assert all(r.usage is None for r in records[:-1])
    assert client.hget(keys.meta_key(rid), "status") == b"cancelled"
    assert client.exists(keys.cancel_key(rid))  # a worker that dequeues it later sees it ended
    assert client.zscore(keys.INDEX_QUEUED_KEY, rid) is None and client.zscore(keys.INDEX_RECENT_KEY, rid)
    assert cli_main(["cancel", rid, "--redis-url", url]) == 0


async def test_async_cancel_of_a_queued_request(producer: Producer, url: str) -> None:
    rid = producer.submit("never runs either", max_tokens=50, queue=NOBODY)
    async with AsyncStreamReader(url) as reader:
        assert await reader.cancel(rid) == "cancelled"
        result = await reader.result(rid, timeout_s=5)
        assert await reader.cancel(rid) == "ended"
    assert result.finish_reasons == ["cancelled"] and result.texts == [""]


def test_cancel_leaves_a_request_a_worker_holds_to_the_worker(producer: Producer, client: redis.Redis) -> None:
    rid = producer.submit("claimed", max_tokens=50, queue=NOBODY)
    client.set(keys.lease_key(rid), "w1/1", px=5000)  # a worker claimed it, has written nothing yet
    assert producer.cancel(rid) == "signalled"
    assert not client.exists(keys.deltas_key(rid))  # the worker writes the records, not us
    assert client.get(keys.cancel_key(rid)) == b"1"


def test_cancel_of_an_ended_request_is_a_no_op(producer: Producer, client: redis.Redis) -> None:
    rid = producer.submit("done", max_tokens=50, queue=NOBODY)
    last = Record(seq=0, finish_reason="stop", usage=Usage())
    client.xadd(keys.deltas_key(rid), {"r": encode(last)}, id="1-0")  # as a worker would, status unset
    assert producer.cancel(rid) == "ended"
    assert not client.exists(keys.cancel_key(rid))


def test_batch_cancel_ends_queued_items_at_once(producer: Producer, url: str) -> None:
    batch_id = producer.submit_batch(["one", "two", "three"], max_tokens=5, queue=NOBODY)
    assert producer.cancel_batch(batch_id) == 3
    with StreamReader(url) as reader:
        progress = reader.batch(batch_id)
        results = list(reader.batch_results(batch_id, timeout_s=5))
    assert progress.cancelled == 3
    assert [r.result.finish_reasons for r in results if r.result is not None] == [["cancelled"]] * 3


def test_reader_waits_while_queued_past_timeout_s(producer: Producer, url: str) -> None:
    rid = producer.submit("slow queue", max_tokens=5, queue=NOBODY)
    timer = threading.Timer(1.5, producer.cancel, args=(rid,))  # ends it after 5 x timeout_s
    timer.start()
    start = time.monotonic()
    with StreamReader(url) as reader:
        records = list(reader.stream(rid, timeout_s=0.3))
    timer.join()
    assert time.monotonic() - start >= 1.4
    assert [r.finish_reason for r in records] == ["cancelled"]
