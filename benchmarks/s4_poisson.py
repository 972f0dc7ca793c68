"""Scenario 4: requests arriving at random (Poisson) times with mixed lengths."""

from __future__ import annotations

import asyncio
import random
import time

from benchmarks.common import Context, Row, ms, percentile
from benchmarks.prompts import story_prompt
from benchmarks.timing import Trace, afollow, submit
from consumer import AsyncStreamReader
from producer import Producer

NAME = "4 poisson arrivals"
SEED = 1234


def shape(quick: bool) -> tuple[int, float, int]:
    """Requests, span in seconds, largest max_tokens."""
    return (12, 5.0, 32) if quick else (64, 45.0, 128)


def arrivals(quick: bool) -> tuple[list[float], list[int]]:
    """The trace: gaps between arrivals (s) and each request's max_tokens (also replayed
    against vLLM's server by benchmarks/vllm_ref.py)."""
    n, span_s, max_len = shape(quick)
    rng = random.Random(SEED)
    gaps = [rng.expovariate(n / span_s) for _ in range(n)]
    lengths = [rng.randint(16, max_len) for _ in range(n)]
    return gaps, lengths


def run(ctx: Context) -> list[Row]:
    # About 80% of this machine's batch capacity (~135 tok/s): busy, not overloaded, so TTFT
    # shows the engine rather than a growing queue.
    n, _span_s, max_len = shape(ctx.quick)
    gaps, lengths = arrivals(ctx.quick)
    stack = ctx.stack()
    started, traces = asyncio.run(replay(stack.producer, stack.url, gaps, lengths))
    end = max(t.last for t in traces if t.last is not None)
    total = sum(t.tokens for t in traces)
    reader_ttft = [t.ttft_s for t in traces if t.ttft_s is not None]
    usage_ttft = [t.usage.ttft_s for t in traces if t.usage and t.usage.ttft_s is not None]
    queue = [t.usage.queue_s for t in traces if t.usage]
    note = (
        f"{n} requests over {sum(gaps):.1f} s (seed {SEED}), max_tokens 16..{max_len}, {total} tokens; "
        f"offered {sum(lengths) / sum(gaps):.0f} tok/s; usage.queue_s p50 {ms(percentile(queue, 50)):.0f} ms "
        f"(TTFT - queue_s = prefill)"
    )
    return [
        Row(NAME, "aggregate tok/s", total / (end - started), None, "tok/s", note=note),
        Row(NAME, "TTFT p50 at reader", ms(percentile(reader_ttft, 50)), None, "ms"),
        Row(NAME, "TTFT p99 at reader", ms(percentile(reader_ttft, 99)), None, "ms"),
        Row(NAME, "TTFT p50 usage.ttft_s", ms(percentile(usage_ttft, 50)), None, "ms"),
        Row(NAME, "TTFT p99 usage.ttft_s", ms(percentile(usage_ttft, 99)), None, "ms"),
    ]


async def replay(producer: Producer, url: str, gaps: list[float], lengths: list[int]) -> tuple[float, list[Trace]]:
    """The trace through the pipeline: each request submitted at its arrival time, whatever is
    in flight (scenario 14 replays it on each engine too)."""
    async with AsyncStreamReader(url) as reader:
        started = time.perf_counter()
        due = started
        tasks: list[asyncio.Task[Trace]] = []
        for i, (gap, length) in enumerate(zip(gaps, lengths, strict=True)):
            due += gap
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            trace = submit(producer, story_prompt(i), max_tokens=length, temperature=0, ignore_eos=True)
            tasks.append(asyncio.create_task(afollow(reader, trace)))
        return started, list(await asyncio.gather(*tasks))
