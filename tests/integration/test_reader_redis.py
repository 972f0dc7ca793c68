"""Both reader shells against the real Redis at 127.0.0.1:6379, records written by hand.

The server is shared: every test uses its own request ids and deletes only its own keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from consumer import (
    AsyncStreamReader,
    GenerationFailed,
    Record,
    RelayConnectionError,
    RequestNotFound,
    StreamReader,
    StreamTimeout,
)
from schemas import keys, settings
from schemas.errors import ValidationError
from schemas.records import ErrorInfo, Usage, encode

URL = "redis://127.0.0.1:6379/0"
TTL_S = 120
USAGE = Usage(prompt_tokens=2, completion_tokens=5, total_tokens=7)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(URL)
    c.ping()  # the machine's Redis must be there: a missing server fails, it never skips
    yield c
    c.close()


@pytest.fixture
def new_id(client: redis.Redis) -> Iterator[object]:
    """Hands out fresh request ids and deletes their keys afterwards."""
    made: list[str] = []

    def make() -> str:
        made.append(f"test-consumer-{uuid.uuid4().hex}")
        return made[-1]

    yield make
    for rid in made:
        client.delete(keys.deltas_key(rid), keys.meta_key(rid), keys.cancel_key(rid), keys.lease_key(rid))


def submit(client: redis.Redis, rid: str) -> None:
    """What the producer does first: the meta key, before any record."""
    client.hset(keys.meta_key(rid), mapping={"submitted_at": time.time()})
    client.expire(keys.meta_key(rid), TTL_S)


def append(client: redis.Redis, rid: str, record: Record) -> None:
    """What a worker does per record: explicit id, field r, TTL refreshed."""
    with client.pipeline(transaction=True) as pipe:
        pipe.xadd(keys.deltas_key(rid), {"r": encode(record)}, id=keys.entry_id_for(record.seq))
        pipe.expire(keys.deltas_key(rid), TTL_S)
        pipe.execute()


def story(n: int = 6) -> list[Record]:
    out = [Record(seq=i, text=f"w{i} ", token_ids=[i]) for i in range(n - 1)]
    out.append(Record(seq=n - 1, text="fin", token_ids=[n], finish_reason="stop", usage=USAGE))
    return out


def write_all(client: redis.Redis, rid: str, records: list[Record]) -> None:
    submit(client, rid)
    for r in records:
        append(client, rid, r)


def write_slowly(client: redis.Redis, rid: str, records: list[Record], gap_s: float) -> threading.Thread:
    def run() -> None:
        for r in records:
            time.sleep(gap_s)
            append(client, rid, r)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def read_sync(rid: str, **kwargs: object) -> list[Record]:
    with StreamReader(URL) as reader:
        return list(reader.stream(rid, **kwargs))  # type: ignore[arg-type]


async def read_async(rid: str, **kwargs: object) -> list[Record]:
    async with AsyncStreamReader(URL) as reader:
        return [r async for r in reader.stream(rid, **kwargs)]  # type: ignore[arg-type]


def ids(records: list[Record]) -> list[str | None]:
    return [r.entry_id for r in records]


async def test_sync_and_async_readers_yield_identical_records(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = story()
    write_all(client, rid, records)
    got_sync = await asyncio.to_thread(read_sync, rid)
    got_async = await read_async(rid)
    assert got_sync == got_async == records
    assert ids(got_sync) == ids(got_async) == [keys.entry_id_for(r.seq) for r in records]


def test_concurrent_readers_and_a_late_reader_see_the_same_records(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = story(20)
    submit(client, rid)
    results: list[list[Record]] = [[], []]

    def follow(slot: int) -> None:
        results[slot] = read_sync(rid, timeout_s=10)

    readers = [threading.Thread(target=follow, args=(i,)) for i in range(2)]
    for t in readers:
        t.start()
    write_slowly(client, rid, records, gap_s=0.01).join()
    for t in readers:
        t.join(timeout=15)
    late = read_sync(rid)
    assert results[0] == results[1] == late == records
    assert ids(results[0]) == ids(results[1]) == ids(late)


def test_resume_from_an_entry_id(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = story(8)
    write_all(client, rid, records)
    first = read_sync(rid)
    cursor = first[3].entry_id
    assert cursor is not None
    assert read_sync(rid, after=cursor) == records[4:]


def test_reader_follows_a_live_writer(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = story(15)
    submit(client, rid)
    writer = write_slowly(client, rid, records, gap_s=0.05)
    arrivals: list[float] = []
    got: list[Record] = []
    with StreamReader(URL) as reader:
        for record in reader.stream(rid, timeout_s=5):
            arrivals.append(time.monotonic())
            got.append(record)
    writer.join()
    assert got == records
    # Live, not all at the end: records trickle in over the writer's ~0.75 s.
    assert arrivals[-1] - arrivals[0] > 0.4


async def test_async_reader_follows_a_live_writer(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = story(10)
    submit(client, rid)
    writer = write_slowly(client, rid, records, gap_s=0.03)
    got = await read_async(rid, timeout_s=5)
    writer.join()
    assert got == records


def test_unknown_request_is_not_found(new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    with StreamReader(URL) as reader:
        with pytest.raises(RequestNotFound):
            list(reader.stream(rid))
        with pytest.raises(RequestNotFound):
            reader.result(rid)


async def test_unknown_request_is_not_found_async(new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    async with AsyncStreamReader(URL) as reader:
        with pytest.raises(RequestNotFound):
            await reader.result(rid)


def test_request_that_expires_while_read_is_not_found(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    submit(client, rid)
    append(client, rid, Record(seq=0, text="a"))
    got: list[Record] = []
    with StreamReader(URL) as reader, pytest.raises(RequestNotFound):
        for record in reader.stream(rid, timeout_s=10):
            got.append(record)
            client.delete(keys.deltas_key(rid), keys.meta_key(rid))  # as if the TTL ran out
    assert len(got) == 1


def running(client: redis.Redis, rid: str) -> None:
    """What a worker's claim does before its first record: the lease key, status running."""
    submit(client, rid)
    client.hset(keys.meta_key(rid), "status", "running")
    client.set(keys.lease_key(rid), "w1/1", ex=TTL_S)


def test_silent_running_request_times_out(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    running(client, rid)
    start = time.monotonic()
    with StreamReader(URL) as reader, pytest.raises(StreamTimeout):
        list(reader.stream(rid, timeout_s=0.3))
    assert 0.3 <= time.monotonic() - start < 2.0


def test_queued_request_waits_past_timeout_s_until_a_worker_starts(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    submit(client, rid)

    def worker_starts_late() -> None:
        time.sleep(1.5)  # five times timeout_s in the queue
        client.hset(keys.meta_key(rid), "status", "running")
        client.set(keys.lease_key(rid), "w1/1", ex=TTL_S)
        time.sleep(0.1)
        write_all(client, rid, story(3))

    thread = threading.Thread(target=worker_starts_late, daemon=True)
    thread.start()
    got = read_sync(rid, timeout_s=0.3)
    thread.join()
    assert got == story(3)


def test_queue_timeout_s_limits_the_wait_in_the_queue(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    submit(client, rid)
    start = time.monotonic()
    with StreamReader(URL) as reader, pytest.raises(StreamTimeout, match="still queued"):
        list(reader.stream(rid, timeout_s=0.1, queue_timeout_s=0.6))
    assert 0.6 <= time.monotonic() - start < 2.5


async def test_queued_and_silent_requests_time_out_async(client: redis.Redis, new_id: object) -> None:
    queued, silent = new_id(), new_id()  # type: ignore[operator]
    submit(client, queued)
    running(client, silent)
    async with AsyncStreamReader(URL) as reader:
        with pytest.raises(StreamTimeout, match="still queued"):
            await reader.result(queued, timeout_s=0.05, queue_timeout_s=0.4)
        with pytest.raises(StreamTimeout, match="no record"):
            await reader.result(silent, timeout_s=0.2)


def test_cancel_sets_the_cancel_key_with_a_ttl(client: redis.Redis, new_id: object) -> None:
    rid, unknown = new_id(), new_id()  # type: ignore[operator]
    write_all(client, rid, story()[:2])  # running
    with StreamReader(URL) as reader:
        assert reader.cancel(rid) == "signalled"
        with pytest.raises(RequestNotFound):
            reader.cancel(unknown)
    assert client.get(keys.cancel_key(rid)) == b"1"
    assert 0 < client.ttl(keys.cancel_key(rid)) <= settings.ttl_s()
    assert not client.exists(keys.cancel_key(unknown))  # nothing left behind


async def test_async_cancel_sets_the_cancel_key_with_a_ttl(client: redis.Redis, new_id: object) -> None:
    rid, unknown = new_id(), new_id()  # type: ignore[operator]
    write_all(client, rid, story()[:2])  # running
    async with AsyncStreamReader(URL) as reader:
        assert await reader.cancel(rid) == "signalled"
        with pytest.raises(RequestNotFound):
            await reader.cancel(unknown)
    assert client.get(keys.cancel_key(rid)) == b"1"
    assert 0 < client.ttl(keys.cancel_key(rid)) <= settings.ttl_s()
    assert not client.exists(keys.cancel_key(unknown))


def test_cancel_on_exit_cancels_on_break_only(client: redis.Redis, new_id: object) -> None:
    broke, ended = new_id(), new_id()  # type: ignore[operator]
    write_all(client, broke, story()[:3])  # still running
    write_all(client, ended, story())
    with StreamReader(URL) as reader:
        for _ in reader.stream(broke, cancel_on_exit=True):
            break
        assert client.exists(keys.cancel_key(broke))
        assert len(list(reader.stream(ended, cancel_on_exit=True))) == 6
    assert not client.exists(keys.cancel_key(ended))


def test_cancel_on_exit_cancels_on_exception(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    write_all(client, rid, story()[:3])
    with StreamReader(URL) as reader, pytest.raises(KeyError):
        for _ in reader.stream(rid, cancel_on_exit=True):
            raise KeyError("consumer crashed")
    assert client.exists(keys.cancel_key(rid))


async def test_async_cancel_on_exit_cancels_on_break_only(client: redis.Redis, new_id: object) -> None:
    broke, dropped, ended = new_id(), new_id(), new_id()  # type: ignore[operator]
    for rid in (broke, dropped):
        write_all(client, rid, story()[:3])
    write_all(client, ended, story())
    async with AsyncStreamReader(URL) as reader:
        async with contextlib.aclosing(reader.stream(broke, cancel_on_exit=True)) as deltas:
            async for _ in deltas:
                break
        assert client.exists(keys.cancel_key(broke))  # closed at once
        assert len([r async for r in reader.stream(ended, cancel_on_exit=True)]) == 6
        async for _ in reader.stream(dropped, cancel_on_exit=True):
            break  # not closed here: the loop closes the dropped generator, and aclose() waits for it
    assert client.exists(keys.cancel_key(dropped))
    assert not client.exists(keys.cancel_key(ended))


async def test_async_cancel_on_exit_after_break_while_reader_stays_open(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    write_all(client, rid, story()[:3])
    async with AsyncStreamReader(URL) as reader:
        async for _ in reader.stream(rid, cancel_on_exit=True):
            break
        for _ in range(100):
            if client.exists(keys.cancel_key(rid)):
                break
            await asyncio.sleep(0.01)
        assert client.exists(keys.cancel_key(rid))


async def test_async_reader_close_closes_a_stream_in_progress(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    write_all(client, rid, story()[:3])
    async with AsyncStreamReader(URL) as reader:
        deltas = reader.stream(rid, cancel_on_exit=True)
        assert (await deltas.__anext__()).seq == 0
    assert client.exists(keys.cancel_key(rid))
    del deltas


def failing_story() -> list[Record]:
    boom = ErrorInfo(type="RuntimeError", message="worker died")
    return [
        Record(seq=0, text="half "),
        Record(seq=1, text="done", finish_reason="error", error=boom),
        Record(seq=2, finish_reason="error", error=boom, usage=USAGE),
    ]


def test_generation_failed_after_all_records(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    records = failing_story()
    write_all(client, rid, records)
    got: list[Record] = []
    with StreamReader(URL) as reader:
        with pytest.raises(GenerationFailed) as info:
            for record in reader.stream(rid, cancel_on_exit=True):
                got.append(record)
        assert got == records
        assert info.value.error_type == "RuntimeError"
        with pytest.raises(GenerationFailed) as info:
            reader.result(rid)
    assert info.value.result.texts == ["half done"]
    assert info.value.result.usage == USAGE
    assert not client.exists(keys.cancel_key(rid))  # it ended: nothing to cancel


async def test_generation_failed_async(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    write_all(client, rid, failing_story())
    async with AsyncStreamReader(URL) as reader:
        with pytest.raises(GenerationFailed) as info:
            await reader.result(rid)
    assert info.value.result.records == 3


def test_result_of_a_finished_request(client: redis.Redis, new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    write_all(client, rid, story())
    with StreamReader(client=client) as reader:
        result = reader.result(rid)
    assert result.texts == ["w0 w1 w2 w3 w4 fin"]
    assert result.finish_reasons == ["stop"]
    assert result.last_entry_id == "6-0"
    client.ping()  # an injected client is the caller's: close() leaves it open


def test_connection_errors_name_the_url_without_the_password(new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    with StreamReader("redis://user:s3cret@127.0.0.1:1/0") as reader, pytest.raises(RelayConnectionError) as info:
        reader.result(rid)
    message = str(info.value)
    assert "127.0.0.1:1" in message
    assert "s3cret" not in message
    assert "***" in message


async def test_async_connection_errors_are_translated(new_id: object) -> None:
    rid = new_id()  # type: ignore[operator]
    async with AsyncStreamReader("redis://:pw@127.0.0.1:1/0") as reader:
        with pytest.raises(RelayConnectionError, match=r"redis://:\*\*\*@127\.0\.0\.1:1/0"):
            await reader.cancel(rid)


def test_a_client_that_decodes_responses_is_refused() -> None:
    with pytest.raises(ValidationError, match="decode_responses"):
        StreamReader(client=redis.Redis.from_url(URL, decode_responses=True))


def test_importing_consumer_does_not_import_torch_or_transformers() -> None:
    code = "import sys, consumer; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


async def test_a_reader_at_its_connection_cap_names_the_setting(
    client: redis.Redis, new_id: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOKENRELAY_REDIS_MAX_CONNECTIONS", "1")
    rid = new_id()  # type: ignore[operator]
    running(client, rid)
    async with AsyncStreamReader(URL) as reader:
        first = asyncio.create_task(anext(reader.stream(rid, timeout_s=3)))
        await asyncio.sleep(0.3)  # the first stream holds the one connection in XREAD BLOCK
        with pytest.raises(RelayConnectionError, match="TOKENRELAY_REDIS_MAX_CONNECTIONS"):
            await anext(reader.stream(rid, timeout_s=1))
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError, StreamTimeout):
            await first
