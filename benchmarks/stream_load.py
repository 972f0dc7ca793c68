"""Scenario 5's moving parts: a publisher process (the worker's real `StreamSink`) and readers.

Each record carries its publish time (``time.time()`` just before the batch's round trip) in
``text``, so a reader can tell the delivery latency of every record it yields.  The publisher
is a separate process so that it and the readers really run in parallel (2 cores, one GIL each).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from consumer import AsyncStreamReader, StreamReader
from schemas import keys
from schemas.records import Record, Usage
from schemas.redis_util import connect

GO_DELAY_S = 0.5  # readers are blocked in XREAD by then


@dataclass(frozen=True)
class Load:
    records: int
    batch: int
    interval_s: float = 0.0  # 0: as fast as possible (throughput); else paced (latency)


@dataclass
class Received:
    latencies: list[float] = field(default_factory=list)
    first_stamp: float = float("inf")
    last_at: float = 0.0
    count: int = 0

    def see(self, record: Record) -> None:
        self.see_text(record.text)

    def see_text(self, text: str) -> None:
        """A record whose text is its publish time (from a reader, or an SSE event's chunk)."""
        now = time.time()
        stamp = float(text)
        self.latencies.append(now - stamp)
        self.first_stamp = min(self.first_stamp, stamp)
        self.last_at = max(self.last_at, now)
        self.count += 1


def publish_main(url: str, rid: str, load: Load, ready: Any, go: Any, out: Any) -> None:
    """Child process: publish ``load`` to one stream with `StreamSink.publish`."""
    from workers.publisher import StreamSink

    sink = StreamSink(connect(url), ttl_s=600, url=url, worker_id="bench", lease_s=600)
    claim = sink.claim(rid, 600)  # every write is fenced by a lease, as in a worker
    sink.hold(rid, claim.owner, "0-0", 600)
    ready.set()
    go.wait()
    started = time.perf_counter()
    due = time.perf_counter()
    for first in range(0, load.records, load.batch):
        stamp = repr(time.time())
        seqs = range(first, min(first + load.batch, load.records))
        sink.publish([(rid, _record(seq, stamp, seq == load.records - 1)) for seq in seqs])
        if load.interval_s:
            due += load.interval_s
            time.sleep(max(0.0, due - time.perf_counter()))
    out.put(time.perf_counter() - started)


def _record(seq: int, stamp: str, last: bool) -> Record:
    return Record(
        seq=seq, text=stamp, token_ids=[seq], finish_reason="length" if last else None, usage=Usage() if last else None
    )


class Publisher:
    """The publisher child, started and waiting for `go`."""

    def __init__(self, url: str, rid: str, load: Load) -> None:
        ctx = mp.get_context("spawn")  # no fork of a process that may hold torch threads
        self.ready, self.go, self.out = ctx.Event(), ctx.Event(), ctx.Queue()
        self.proc = ctx.Process(target=publish_main, args=(url, rid, load, self.ready, self.go, self.out))
        self.proc.start()
        if not self.ready.wait(60):
            raise RuntimeError("publisher process did not start")

    def finish(self) -> float:
        """Seconds the publisher spent publishing."""
        elapsed = float(self.out.get(timeout=120))
        self.proc.join(10)
        return elapsed


def new_stream(url: str) -> str:
    """A fresh request id with its meta key, so that readers wait for it instead of failing."""
    rid = keys.new_request_id()
    client = connect(url)
    client.hset(keys.meta_key(rid), mapping={"submitted_at": repr(time.time()), "model": "bench"})
    client.expire(keys.meta_key(rid), 600)
    client.close()
    return rid


def read_one(url: str, rid: str, pub: Publisher) -> Received:
    """One blocking `StreamReader` in this thread."""
    got = Received()
    threading.Timer(GO_DELAY_S, pub.go.set).start()
    with StreamReader(url) as reader:
        for record in reader.stream(rid, timeout_s=60):
            got.see(record)
    return got


async def read_many(url: str, rid: str, pub: Publisher, readers: int) -> list[Received]:
    """``readers`` `AsyncStreamReader` streams of one request in this event loop."""
    async with AsyncStreamReader(url) as reader:

        async def one() -> Received:
            got = Received()
            async for record in reader.stream(rid, timeout_s=60):
                got.see(record)
            return got

        tasks = [asyncio.create_task(one()) for _ in range(readers)]
        asyncio.get_running_loop().call_later(GO_DELAY_S, pub.go.set)
        return list(await asyncio.gather(*tasks))
