"""Continuous batching seen from outside: many requests share one worker's engine."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from consumer import StreamReader
from producer import Producer
from schemas.job import DEFAULT_QUEUE
from tests.integration.conftest import Stack
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration


def test_concurrent_greedy_requests_equal_solo_runs(tiny_stack: Stack) -> None:
    """Greedy tokens of requests that join and leave one batch at different times equal the
    tokens of each request run alone.  fp32 on CPU: rows of a batched matmul are computed
    independently here, so the comparison is exact (token ids)."""
    prompts = [f"prompt {i} " + "日本語 " * i for i in range(6)]
    lengths = [12, 40, 25, 60, 8, 33]
    solo = []
    for p, n in zip(prompts, lengths, strict=True):
        rid = tiny_stack.producer.submit(p, max_tokens=n, temperature=0, ignore_eos=True)
        solo.append(tiny_stack.reader.result(rid, timeout_s=60).token_ids[0])
    rids = []
    for p, n in zip(prompts, lengths, strict=True):
        rids.append(tiny_stack.producer.submit(p, max_tokens=n, temperature=0, ignore_eos=True))
        time.sleep(0.05)  # arrive at different steps
    together = [tiny_stack.reader.result(rid, timeout_s=60).token_ids[0] for rid in rids]
    assert together == solo


def test_worker_reserves_no_more_than_it_runs(server_factory: object, smollm2_dir: Path) -> None:
    # SmolLM2, not the tiny model: its requests must outlive the observation (the tiny
    # model would finish 500 tokens in about a second and take the next ones).
    url = server_factory()  # type: ignore[operator]
    producer, reader = Producer(url), StreamReader(url)
    broker = redis.Redis.from_url(url)
    extra = ["--concurrency", "2", "--max-running", "2"]
    with WorkerProcess(redis_url=url, extra_args=extra).wait_ready():
        rids = [producer.submit(f"long {i}", max_tokens=2000, ignore_eos=True) for i in range(6)]
        deadline = time.monotonic() + 30
        while broker.llen(DEFAULT_QUEUE) > 4 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)  # give a greedy prefetcher time to take more
        assert broker.llen(DEFAULT_QUEUE) == 4  # two taken, four still on the broker
        for rid in rids:
            producer.cancel(rid)
        results = [reader.result(rid, timeout_s=60) for rid in rids]
    assert all(r.finish_reasons == ["cancelled"] for r in results)
    assert sum(r.usage.completion_tokens for r in results if r.usage) < 400  # cancelled long before the end
    producer.close()
    reader.close()
    broker.close()
