"""A worker killed mid-request: another worker finishes the stream, no token lost or repeated.

The broker redelivers the unacknowledged task (``acks_late``; the Redis transport after the
visibility timeout, shortened here).  The new worker reads what the stream holds, replays
it, and continues at the next ``seq``.  With a seed its draws are those the first worker
would have made, so the whole stream equals an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from consumer import StreamReader
from producer import Producer
from schemas import Record
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

VISIBILITY_S = "4"


def _worker(url: str, model: Path) -> WorkerProcess:
    # One slot and a slow-ish stream interval are not needed: the tiny model is fast, so the
    # request is long (ignore_eos, many tokens) to be killed while running.
    return WorkerProcess(
        redis_url=url,
        model=str(model),
        env={"TOKENRELAY_VISIBILITY_TIMEOUT_S": VISIBILITY_S},
        extra_args=["--concurrency", "2", "--threads", "1"],
    )


def test_killed_worker_resumes_without_loss_or_repeat(server_factory: object, tiny_model_dir: Path) -> None:
    url = server_factory()  # type: ignore[operator]
    producer, reader = Producer(url), StreamReader(url)
    config = {"max_tokens": 400, "temperature": 1.0, "seed": 1234, "ignore_eos": True, "n": 2}

    first = _worker(url, tiny_model_dir).wait_ready()
    reference = reader.result(producer.submit("durable ünïcode 日本語", **config), timeout_s=120)

    rid = producer.submit("durable ünïcode 日本語", **config)
    seen: list[Record] = []
    stream = reader.stream(rid, timeout_s=120)
    for record in stream:
        seen.append(record)
        if len(seen) == 20:
            first.kill()  # SIGKILL: no warm shutdown, the task stays unacknowledged
            break
    stream.close()
    assert not first.alive()

    started = time.monotonic()
    with _worker(url, tiny_model_dir).wait_ready():
        records = list(reader.stream(rid, timeout_s=120))
    took = time.monotonic() - started

    assert [r.seq for r in records] == list(range(len(records)))  # nothing skipped or repeated
    assert records[:20] == seen
    assert records[-1].usage is not None
    for index in range(2):
        mine = [r for r in records if r.index == index]
        tokens = [t for r in mine for t in r.token_ids]
        assert tokens == reference.token_ids[index]
        assert "".join(r.text for r in mine) == reference.texts[index]
    assert records[-1].usage.completion_tokens == 800
    assert took < 45  # worker start + visibility timeout (4 s) + one restore sweep (1 s) + the rest
