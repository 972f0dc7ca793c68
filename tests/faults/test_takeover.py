"""Workers that die, freeze or shut down mid-request: their requests go on elsewhere within
seconds, with default lease settings, and every stream stays whole.

Each scenario ends with the one invariant checker, and a seeded request's tokens are
compared with an uninterrupted run of the same request."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from consumer import StreamReader
from producer import Producer
from schemas import keys
from tests.faults.conftest import AofServer, lease_holder, wait_for
from tests.faults.invariants import check_stream, raw_records, text_of, tokens_of
from workers.launcher import WorkerProcess
from workers.resume import is_complete

pytestmark = [pytest.mark.integration, pytest.mark.faults]

PROMPT = "durable ünïcode 日本語"
CONFIG = {"max_tokens": 300, "temperature": 1.0, "seed": 1234, "ignore_eos": True, "n": 2}
SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
TAKEOVER_LIMIT_S = 10.0  # the contract: within 10 s of the death


def _reference(producer: Producer, reader: StreamReader) -> list[list[int]]:
    result = reader.result(producer.submit(PROMPT, **CONFIG), timeout_s=120)
    return result.token_ids


def _read_until(reader: StreamReader, rid: str, count: int) -> None:
    stream = reader.stream(rid, timeout_s=60)
    for i, _record in enumerate(stream, 1):
        if i >= count:
            break
    stream.close()


def _gap_after(reader: StreamReader, rid: str, after: str, t0: float) -> tuple[float, list[object]]:
    """Seconds from ``t0`` to the next record after entry ``after``, and the rest of the stream."""
    first_at = None
    rest = []
    for record in reader.stream(rid, after=after, timeout_s=60):
        if first_at is None:
            first_at = time.monotonic()
        rest.append(record)
    assert first_at is not None
    return first_at - t0, rest


def _check_equal_to_reference(server: AofServer, rid: str, reference: list[list[int]]) -> None:
    records = raw_records(server.client(), rid)
    check_stream(records, n=2)
    for index in range(2):
        assert tokens_of(records, index) == reference[index]
    assert records[-1].usage is not None and records[-1].usage.completion_tokens == 600


def test_kill_9_with_an_idle_peer_resumes_within_seconds(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    first = worker_factory(url)
    reference = _reference(producer, reader)
    peer = worker_factory(url)  # idle, already up

    rid = producer.submit(PROMPT, **CONFIG)
    _read_until(reader, rid, 10)
    client = aof_server.client()
    victim, survivor = _holder_first([first, peer], lease_holder(client, rid))
    t0 = time.monotonic()
    victim.kill()  # waits for the death: every record after `last` is the survivor's
    last = raw_records(client, rid)[-1].entry_id
    took, _rest = _gap_after(reader, rid, last or "0", t0)

    assert took < TAKEOVER_LIMIT_S, f"takeover took {took:.1f}s; the survivor's log:\n{survivor.log_tail(60)}"
    _check_equal_to_reference(aof_server, rid, reference)
    assert survivor.alive()
    assert "taking over request" in survivor.log_tail(200)


def test_kill_9_then_a_peer_started_later_takes_over(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    first = worker_factory(url)
    reference = _reference(producer, reader)
    rid = producer.submit(PROMPT, **CONFIG)
    _read_until(reader, rid, 10)
    first.kill()
    time.sleep(1.0)
    worker_factory(url)  # starts after the death; its first scan finds the expired lease
    list(reader.stream(rid, timeout_s=60))
    _check_equal_to_reference(aof_server, rid, reference)


def test_sigstop_past_the_lease_then_sigcont_the_zombie_writes_nothing(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    workers = [worker_factory(url), worker_factory(url)]
    reference = _reference(producer, reader)
    rid = producer.submit(PROMPT, **CONFIG)
    _read_until(reader, rid, 10)
    client = aof_server.client()
    frozen, peer = _holder_first(workers, lease_holder(client, rid))
    first_holder = lease_holder(client, rid)
    frozen.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: (h := lease_holder(client, rid)) is not None and h != first_holder, 20, "a new lease holder")
        list(reader.stream(rid, timeout_s=60))  # the peer finishes the request
    finally:
        frozen.signal(signal.SIGCONT)
    time.sleep(2.0)  # the zombie runs its next step: it must find its lease lost
    _check_equal_to_reference(aof_server, rid, reference)
    assert frozen.alive() and peer.alive()
    assert f"request {rid}: lease lost to another worker" in frozen.log_tail(300)
    # the zombie goes on serving: stop the peer so that the next request is the zombie's
    peer.kill()
    again = reader.result(producer.submit("after the freeze", max_tokens=5, ignore_eos=True), timeout_s=60)
    assert again.finish_reasons == ["length"]


def test_sigterm_with_a_short_grace_hands_off_without_loss(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess], smollm2_dir: Path
) -> None:
    """SmolLM2 here: the tiny model would finish the request within any short grace."""
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    smol = {"model": SMOL, "env": {"TOKENRELAY_TORCH_THREADS": "1"}}
    workers = [worker_factory(url, "--grace-s", "0.5", **smol), worker_factory(url, "--grace-s", "0.5", **smol)]
    config = {"max_tokens": 48, "temperature": 0.8, "seed": 7, "ignore_eos": True}
    reference = reader.result(producer.submit("Tell me a story.", **config), timeout_s=120)
    rid = producer.submit("Tell me a story.", **config)
    _read_until(reader, rid, 5)
    leaving, peer = _holder_first(workers, lease_holder(aof_server.client(), rid))
    leaving.signal(signal.SIGTERM)
    leaving.proc.wait(30)
    assert leaving.proc.returncode == 0
    assert "handing 1 request(s) off" in leaving.log_tail(200)
    list(reader.stream(rid, timeout_s=60))
    records = raw_records(aof_server.client(), rid)
    check_stream(records, n=1)
    assert tokens_of(records, 0) == reference.token_ids[0]
    assert text_of(records, 0) == reference.texts[0]
    assert peer.alive()
    assert f"taking over request {rid}" in peer.log_tail(300)


def test_a_poison_request_is_given_up_after_max_attempts(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess]
) -> None:
    """A request whose workers keep dying ends with too_many_attempts, never loops."""
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    client = aof_server.client()
    rid = producer.submit(PROMPT, **CONFIG)
    for attempt in (1, 2):
        w = worker_factory(url, "--max-attempts", "2")
        suffix = f"/{attempt}"
        wait_for(lambda s=suffix: (lease_holder(client, rid) or "").endswith(s), 30, f"attempt {attempt}")
        w.kill()  # "the request killed its worker"
        assert not is_complete(raw_records(client, rid))
    worker_factory(url, "--max-attempts", "2")  # the third claim gives up
    records = []
    with pytest.raises(Exception) as info:
        for r in reader.stream(rid, timeout_s=60):
            records.append(r)
    assert getattr(info.value, "error_type", None) == "too_many_attempts", info.value
    check_stream(raw_records(client, rid), n=2)
    assert client.hget(keys.meta_key(rid), "status") == b"failed"


def _holder_first(workers: list[WorkerProcess], holder: str | None) -> tuple[WorkerProcess, WorkerProcess]:
    """(the worker whose id the lease names, the other one)."""
    assert holder is not None
    a, b = workers
    return (a, b) if holder.startswith(f"tokenrelay-{a.pid}-") else (b, a)
