"""Scenario 3: 16 requests at once; aggregate tokens/s vs a static batch and vs one-at-a-time."""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import Context, Row
from benchmarks.prompts import story_prompts
from benchmarks.timing import Trace, afollow, submit
from consumer import AsyncStreamReader
from producer import Producer

NAME = "3 batch of 16"
GOAL_STATIC = 0.9
GOAL_SEQUENTIAL = 8.0


def run(ctx: Context) -> list[Row]:
    n, tokens = (4, 16) if ctx.quick else (16, 128)
    seq_n, seq_tokens = (2, 8) if ctx.quick else (4, 32)  # sequential: fewer tokens, extrapolated
    prompts = story_prompts(n)
    ref = ctx.ref()
    ref.batch(prompts, 2)  # warm-up
    static_tps = n * tokens / ref.batch(prompts, tokens)
    seq_runs = [ref.stream(p, seq_tokens) for p in prompts[:seq_n]]
    seq_tps = sum(len(r.token_ids) for r in seq_runs) / sum(r.elapsed_s for r in seq_runs)
    stack = ctx.stack()
    started, traces = asyncio.run(pipeline(stack.producer, stack.url, prompts, tokens))
    end = max(t.last for t in traces if t.last is not None)
    total = sum(t.tokens for t in traces)
    pipe_tps = total / (end - started)
    return [
        Row(
            NAME,
            f"aggregate tok/s vs static batch {n}",
            pipe_tps,
            static_tps,
            "tok/s",
            f"ratio >= {GOAL_STATIC}",
            pipe_tps / static_tps >= GOAL_STATIC,
            note=f"{n} x {tokens} tokens, {total} tokens read",
        ),
        Row(
            NAME,
            "aggregate tok/s vs one-at-a-time",
            pipe_tps,
            seq_tps,
            "tok/s",
            f"ratio >= {GOAL_SEQUENTIAL:g}x",
            pipe_tps / seq_tps >= GOAL_SEQUENTIAL,
            note=f"one-at-a-time: in-process sequential generate, {seq_n} x {seq_tokens} tokens",
        ),
    ]


async def pipeline(producer: Producer, url: str, prompts: list[str], tokens: int) -> tuple[float, list[Trace]]:
    """One 2-token warm-up request, then every prompt submitted at once (greedy, ``tokens``
    each) and followed by one reader: the start time and each request's trace (scenario 13
    times its worker counts with it too)."""
    config = {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    async with AsyncStreamReader(url) as reader:
        await afollow(reader, submit(producer, prompts[0], **{**config, "max_tokens": 2}))  # warm-up
        started = time.perf_counter()
        traces = [submit(producer, p, **config) for p in prompts]
        return started, list(await asyncio.gather(*(afollow(reader, t) for t in traces)))
