"""Benchmark 9: submit a 10,000-item batch (items/s) and the request index's memory after
100,000 requests (it must stay flat).  Needs only an embedded server (no worker: the items
wait on the broker, which is the point).  Run: python -m benchmarks.s9_batches"""

from __future__ import annotations

import time

import redis

from cli.embedded import embedded_redis
from producer import Producer
from schemas import index, keys
from schemas.config import GenerationConfig
from schemas.job import Job


def submit_rate(url: str, items: int = 10_000) -> float:
    with Producer(url, url) as producer:
        start = time.perf_counter()
        producer.submit_batch([f"prompt {i}" for i in range(items)], max_tokens=16)
        return items / (time.perf_counter() - start)


def index_memory(url: str, requests: int = 100_000, chunk: int = 5_000) -> list[tuple[int, int]]:
    """(requests so far, bytes used by the index keys) every 20,000 requests."""
    client = redis.Redis.from_url(url)
    config, out = GenerationConfig(max_tokens=16), []
    for start in range(0, requests, chunk):
        pipe = client.pipeline(transaction=False)
        for i in range(start, start + chunk):
            rid = f"bench-{i}"
            job = Job(request_id=rid, config=config, submitted_at=time.time(), prompt="hello there")
            for command in [*index.on_queued(job), *index.on_running(rid, "w", None, None, 1),
                            *index.on_finished(rid, "finished", {"ttft_s": 0.1}, None, "stop", 16)]:  # fmt: skip
                pipe.execute_command(*command)
        pipe.execute()
        if (start + chunk) % 20_000 == 0:
            out.append((start + chunk, sum(memory(client, k) for k in INDEX_KEYS)))
    return out


INDEX_KEYS = (keys.INDEX_EVENTS_KEY, keys.INDEX_QUEUED_KEY, keys.INDEX_RUNNING_KEY, keys.INDEX_RECENT_KEY)


def memory(client: redis.Redis, key: str) -> int:
    return int(client.memory_usage(key, samples=0) or 0)


def main() -> None:
    with embedded_redis() as url:
        print(f"submit_batch: {submit_rate(url):,.0f} items/s (10,000 items, Redis broker)")
    with embedded_redis() as url:
        for n, used in index_memory(url):
            print(f"index after {n:>7,} requests: {used / 1e6:6.2f} MB")


if __name__ == "__main__":
    main()
