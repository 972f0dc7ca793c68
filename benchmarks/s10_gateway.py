"""Scenario 10: the HTTP gateway (gateway/) against the Python reader it wraps.

- TTFT: ``POST /v1/completions`` with ``stream: true`` (first SSE chunk with text) against
  ``Producer.submit`` + ``StreamReader`` (first record with text), interleaved on the same
  worker; the gateway's cost is the difference of the p50s (goal: +2 ms at most).
- 200 SSE clients: one stream published at a steady pace by the worker's real `StreamSink`
  (benchmarks/stream_load.py: each record's text is its publish time), followed by 200
  ``GET /v1/requests/{id}/events`` clients (httpx, one event loop) against 200
  `AsyncStreamReader` streams in the same kind of loop (the reference): events/s, delivery
  latency p50/p99 (publish → the client has parsed the event), and the gateway process's CPU
  seconds per 1,000 events (psutil).  Clients, gateway, publisher and Redis share 2 cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import psutil

from benchmarks.common import Context, Row, ms, percentile
from benchmarks.stream_load import GO_DELAY_S, Load, Publisher, Received, new_stream, read_many
from benchmarks.timing import run_one

NAME = "10 gateway"
GOAL_ADDED_MS = 2.0
CLIENTS = 200
PROMPT = "The capital of France is"
IDLE_S = 0.3


@contextmanager
def gateway(url: str) -> Iterator[tuple[str, psutil.Process]]:
    """``tokenrelay serve`` as its own process on a free port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "TOKENRELAY_REDIS_URL": url, "TOKENRELAY_BROKER_URL": url}
    args = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gateway did not start")
            time.sleep(0.1)
        yield base, psutil.Process(proc.pid)
    finally:
        proc.terminate()
        proc.wait(10)


def run(ctx: Context) -> list[Row]:
    stack = ctx.stack()
    with gateway(ctx.url) as (base, proc):
        rows = _ttft(ctx, stack, base)
        ctx.stop_worker()  # the SSE fan-out needs no model: free the cores for it
        rows += _fan_out(ctx, base, proc)
    return rows


# -- TTFT ----------------------------------------------------------------------------------


def _sse_ttft(http: httpx.Client, config: dict[str, object]) -> float:
    started = time.perf_counter()
    body = {"prompt": PROMPT, "stream": True, **config}
    ttft = None
    with http.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        # Read to the end (the next run starts on an idle worker), noting the first text.
        for line in response.iter_lines():
            if ttft is None and line.startswith("data: {") and json.loads(line[6:])["choices"][0]["text"]:
                ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError("the stream ended without text")
    return ttft


def _ttft(ctx: Context, stack: object, base: str) -> list[Row]:
    runs = 3 if ctx.quick else 10
    config: dict[str, object] = {"max_tokens": 2, "temperature": 0, "ignore_eos": True}
    producer, reader = stack.producer, stack.reader  # type: ignore[attr-defined]
    with httpx.Client(base_url=base, timeout=120) as http:
        _sse_ttft(http, config), run_one(producer, reader, PROMPT, **config)  # warm-ups
        sse, direct = [], []
        for _ in range(runs):  # interleaved, so drift hits both alike
            time.sleep(IDLE_S)
            sse.append(_sse_ttft(http, config))
            time.sleep(IDLE_S)
            t = run_one(producer, reader, PROMPT, **config).ttft_s
            assert t is not None
            direct.append(t)
    p50 = (ms(percentile(sse, 50)), ms(percentile(direct, 50)))
    added = p50[0] - p50[1]  # type: ignore[operator]
    note = f"{runs} runs each, interleaved; SSE = HTTP request + submit in the gateway + first chunk"
    return [
        Row(NAME, "TTFT p50, SSE vs reader", p50[0], p50[1], "ms", f"added {added:+.1f} ms <= {GOAL_ADDED_MS:g}",
            added <= GOAL_ADDED_MS, note=note, ref_label="Python reader"),
        Row(NAME, "TTFT p90, SSE vs reader", ms(percentile(sse, 90)), ms(percentile(direct, 90)), "ms",
            ref_label="Python reader"),
    ]  # fmt: skip


# -- 200 SSE clients -----------------------------------------------------------------------


async def _sse_clients(base: str, rid: str, pub: Publisher, clients: int) -> list[Received]:
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as http:

        async def one(ready: asyncio.Event) -> Received:
            got = Received()
            try:
                async with http.stream("GET", f"/v1/requests/{rid}/events") as response:
                    response.raise_for_status()
                    ready.set()
                    await _take(response, got)
            finally:
                ready.set()  # a client that failed must not keep the others waiting for it
            return got

        events = [asyncio.Event() for _ in range(clients)]
        tasks = [asyncio.create_task(one(e)) for e in events]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), 60)
        asyncio.get_running_loop().call_later(GO_DELAY_S, pub.go.set)
        return list(await asyncio.wait_for(asyncio.gather(*tasks), 300))


async def _take(response: httpx.Response, got: Received) -> None:
    async for line in response.aiter_lines():
        if line.startswith("data: {"):
            chunk = json.loads(line[6:])
            for choice in chunk["choices"]:
                if choice.get("text"):
                    got.see_text(choice["text"])


def _fan_out(ctx: Context, base: str, proc: psutil.Process) -> list[Row]:
    # An LLM stream's pace (20 records/s each: 4,000 events/s for the gateway) and five times
    # that (20,000 events/s: past what one Python process can frame; shows where it saturates).
    rows = []
    for rate in (20, 100):
        seconds = 5 if ctx.quick else 15
        load = Load(records=rate * seconds, batch=1 if rate <= 20 else 2, interval_s=(1 if rate <= 20 else 2) / rate)
        rows += _one_pace(ctx, base, proc, load, rate)
    return rows


def _one_pace(ctx: Context, base: str, proc: psutil.Process, load: Load, rate: int) -> list[Row]:
    rid = new_stream(ctx.url)
    pub = Publisher(ctx.url, rid, load)
    cpu0 = proc.cpu_times()
    got = asyncio.run(_sse_clients(base, rid, pub, CLIENTS))
    cpu1 = proc.cpu_times()
    pub.finish()
    gateway_cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)

    rid_ref = new_stream(ctx.url)
    pub_ref = Publisher(ctx.url, rid_ref, load)
    ref = asyncio.run(read_many(ctx.url, rid_ref, pub_ref, CLIENTS))
    pub_ref.finish()

    def stats(received: list[Received]) -> tuple[float, float, float, int]:
        lat = [x for g in received for x in g.latencies]
        count = sum(g.count for g in received)
        span = max(g.last_at for g in received) - min(g.first_stamp for g in received)
        return ms(percentile(lat, 50)) or 0.0, ms(percentile(lat, 99)) or 0.0, count / span, count

    p50, p99, got_rate, events = stats(got)
    r50, r99, ref_rate, _ = stats(ref)
    complete = all(g.count == load.records for g in got)
    offered = CLIENTS * rate
    note = (
        f"{CLIENTS} clients x {load.records} records published at {rate}/s ({offered:,} events/s offered); "
        f"every client got every record: {complete}; gateway CPU {gateway_cpu:.1f} s for {events:,} events"
    )
    per_k = 1000 * gateway_cpu / max(1, events)
    label = f"{CLIENTS} AsyncStreamReaders"
    what = f"{CLIENTS} SSE clients @ {rate}/s"
    return [
        Row(NAME, f"events/s, {what}", got_rate, ref_rate, "ev/s", note=note, ref_label=label),
        Row(NAME, f"delivery p50, {what}", p50, r50, "ms", ref_label=label),
        Row(NAME, f"delivery p99, {what}", p99, r99, "ms", ref_label=label),
        Row(NAME, f"gateway CPU per 1,000 events @ {rate}/s", per_k, None, "s", passed=complete or None),
    ]
