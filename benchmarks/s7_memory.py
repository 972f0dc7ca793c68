"""Scenario 7: worker RSS and server memory before and after 1,000 short requests, once
their keys expired (a worker and server of their own, keys with a 5 s TTL)."""

from __future__ import annotations

import asyncio
import time

import psutil

from benchmarks.common import Context, Row
from benchmarks.timing import afollow, submit
from cli.embedded import embedded_redis
from consumer import AsyncStreamReader
from producer import Producer
from schemas.redis_util import SyncClient, connect
from workers.launcher import Stack, start_stack

NAME = "7 memory"
TTL_S = 5
WAVE = 64
WORKER_ARGS = ["--max-running", "16", "--concurrency", "16"]
GOAL_RSS_MIB = 16.0
GOAL_SERVER_KIB = 512.0
MIB = 1024 * 1024


def run(ctx: Context) -> list[Row]:
    requests = 64 if ctx.quick else 1000
    ctx.stop_worker()
    with embedded_redis() as url:
        stack = start_stack(url, extra_args=WORKER_ARGS, env={"TOKENRELAY_TTL_S": str(TTL_S)}, ttl_s=TTL_S)
        try:
            return _measure(stack, requests)
        finally:
            stack.stop()


def _measure(stack: Stack, requests: int) -> list[Row]:
    client = connect(stack.url)
    proc = psutil.Process(stack.worker.pid)
    asyncio.run(_waves(stack.producer, stack.url, WAVE))  # warm-up: first allocations are not leaks
    _wait_expiry(client)
    before = (proc.memory_info().rss, client.info("memory")["used_memory"])
    started = time.perf_counter()
    asyncio.run(_waves(stack.producer, stack.url, requests))
    run_s = time.perf_counter() - started
    during = (proc.memory_info().rss, client.info("memory")["used_memory"], _request_keys(client))
    waited = _wait_expiry(client)
    after = (proc.memory_info().rss, client.info("memory")["used_memory"])
    client.close()
    rss_d, mem_d = (after[0] - before[0]) / MIB, (after[1] - before[1]) / 1024
    detail = (
        f"{requests} requests (max_tokens 4) in {run_s:.1f} s; "
        f"request keys right after: {during[2]}, all expired after {waited:.1f} s"
    )
    return [
        Row(
            NAME,
            "worker RSS delta after expiry",
            rss_d,
            None,
            "MiB",
            f"<= {GOAL_RSS_MIB:g} MiB",
            rss_d <= GOAL_RSS_MIB,
            note=f"RSS before {before[0] / MIB:.1f}, right after {during[0] / MIB:.1f}, "
            f"after expiry {after[0] / MIB:.1f} MiB; {detail}",
        ),
        Row(
            NAME,
            "server used_memory delta after expiry",
            mem_d,
            None,
            "KiB",
            f"<= {GOAL_SERVER_KIB:g} KiB",
            mem_d <= GOAL_SERVER_KIB,
            note=f"used_memory before {before[1] / MIB:.2f}, right after {during[1] / MIB:.2f}, "
            f"after expiry {after[1] / MIB:.2f} MiB",
        ),
    ]


async def _waves(producer: Producer, url: str, requests: int) -> None:
    """Submit in waves and read every stream to its end (so nothing is left running)."""
    async with AsyncStreamReader(url) as reader:
        for first in range(0, requests, WAVE):
            traces = [
                submit(producer, f"Count to {i % 10}:", max_tokens=4, temperature=0)
                for i in range(first, min(first + WAVE, requests))
            ]
            await asyncio.gather(*(afollow(reader, t) for t in traces))


def _request_keys(client: SyncClient) -> int:
    return sum(1 for _ in client.scan_iter(match="tokenrelay:*", count=1000))


def _wait_expiry(client: SyncClient, limit_s: float = 60.0) -> float:
    """Wait until every request key expired (the broker's own keys stay); returns seconds waited."""
    started = time.perf_counter()
    time.sleep(TTL_S)
    while _request_keys(client) and time.perf_counter() - started < limit_s:
        time.sleep(0.5)
    return time.perf_counter() - started
