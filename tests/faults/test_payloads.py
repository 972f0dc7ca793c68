"""Raw task messages straight onto the queue: every payload with a usable request id ends its
stream with an `error` record, anything else is dropped with a log line, a pickle is never
deserialized, a duplicate delivery is settled at once, and the worker survives all of it."""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection

from broker.app import make_celery
from consumer import GenerationFailed, StreamReader
from producer import Producer
from schemas import keys
from schemas.job import DEFAULT_QUEUE, TASK_NAME
from tests.faults.conftest import WORKER_ARGS, AofServer, wait_for
from tests.faults.invariants import check_stream, raw_records
from workers.launcher import WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.faults]


def _good(rid: str) -> dict[str, Any]:
    return {"v": 1, "request_id": rid, "config": {"max_tokens": 4}, "submitted_at": time.time(), "prompt": "hi"}


BAD_PAYLOADS: dict[str, Callable[[str], tuple[tuple[Any, ...], dict[str, Any]]]] = {
    "submitted_at not a number": lambda rid: ((_good(rid) | {"submitted_at": "abc"},), {}),
    "ttl_s not a number": lambda rid: ((_good(rid) | {"ttl_s": "abc"},), {}),
    "unknown extra field": lambda rid: ((_good(rid) | {"surprise": 1},), {}),
    "two positional args": lambda rid: ((_good(rid), "second"), {}),
    "unknown payload version": lambda rid: ((_good(rid) | {"v": 99},), {}),
    "bad config": lambda rid: ((_good(rid) | {"config": {"max_tokens": -1}},), {}),
    "config not a map": lambda rid: ((_good(rid) | {"config": [1, 2]},), {}),
    "neither prompt nor messages": lambda rid: (({k: v for k, v in _good(rid).items() if k != "prompt"},), {}),
}


@pytest.fixture(scope="module")
def stack(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WorkerProcess, str]]:
    """One server and one worker for the module: every case must leave the worker serving."""
    server = AofServer(tmp_path_factory.mktemp("payloads"))
    worker = WorkerProcess(redis_url=server.url, model=str(tiny_model_dir), extra_args=WORKER_ARGS).wait_ready()
    yield worker, server.url
    worker.kill()
    server.stop()


@pytest.mark.parametrize("name", sorted(BAD_PAYLOADS))
def test_a_bad_payload_with_a_usable_id_ends_with_an_error_record(name: str, stack: tuple[WorkerProcess, str]) -> None:
    worker, url = stack
    app = make_celery(None, url)
    rid = keys.new_request_id()
    args, kwargs = BAD_PAYLOADS[name](rid)
    app.send_task(TASK_NAME, args=args, kwargs=kwargs, queue=DEFAULT_QUEUE)
    reader = StreamReader(url)
    wait_for(lambda: raw_records(reader._client, rid), 30, f"the error record of {name!r}")
    with pytest.raises(GenerationFailed) as info:
        list(reader.stream(rid, timeout_s=30))
    assert info.value.error_type == "invalid_request"
    check_stream(raw_records(reader._client, rid))
    assert worker.alive()
    app.close()


def test_garbage_without_an_id_and_a_pickle_are_dropped_and_the_worker_goes_on(
    stack: tuple[WorkerProcess, str],
) -> None:
    worker, url = stack
    app = make_celery(None, url)
    for junk in (None, 42, "text", [1, 2], {"request_id": "{a}b{c}"}, {"request_id": 7}):
        app.send_task(TASK_NAME, args=(junk,), queue=DEFAULT_QUEUE)
    with Connection(url) as conn:  # a pickled message: refused by the consumer, never unpickled
        conn.SimpleQueue(DEFAULT_QUEUE).put(
            pickle.dumps({"request_id": "x"}),
            serializer=None,
            content_type="application/x-python-serialize",
            headers={"task": TASK_NAME, "id": "pickled"},
        )
    with Producer(url) as producer:
        result = StreamReader(url).result(producer.submit("still alive?", max_tokens=3, ignore_eos=True), timeout_s=30)
    assert result.finish_reasons == ["length"]
    assert worker.alive()
    log = worker.log_tail(400)
    assert "without a usable request_id" in log
    app.close()


def test_a_duplicate_delivery_is_settled_at_once_and_no_slot_leaks(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    """The same message twice (a redelivery, or two sends of one job): the second copy finds
    the lease held and is acknowledged at once; the worker keeps every slot."""
    worker, url = worker_factory(aof_server.url), aof_server.url
    app = make_celery(None, url)
    rid = keys.new_request_id()
    payload = _good(rid) | {"config": {"max_tokens": 300, "ignore_eos": True, "n": 2}}
    for _ in range(2):
        app.send_task(TASK_NAME, args=(payload,), queue=DEFAULT_QUEUE)
    reader = StreamReader(url)
    wait_for(lambda: raw_records(reader._client, rid), 30, "the first record")  # no meta: sent raw
    list(reader.stream(rid, timeout_s=60))
    check_stream(raw_records(reader._client, rid), n=2)
    with Producer(url) as producer:  # all four slots still serve
        rids = [producer.submit(f"after {i}", max_tokens=50, ignore_eos=True) for i in range(8)]
        assert all(reader.result(r, timeout_s=60).finish_reasons == ["length"] for r in rids)
    assert worker.alive()
    worker.signal(15)
    worker.proc.wait(30)  # SIGTERM does not hang on a leaked ticket
    assert worker.proc.returncode == 0
    app.close()
