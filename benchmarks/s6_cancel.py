"""Scenario 6: cancel latency, and the freed slot going to the queued request.

A worker with ``--max-running 2``: requests A and B decode, C waits in the engine for a slot.
``producer.cancel(A)`` → A's final record (``cancelled``) at the reader, then C's first token.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from benchmarks.common import Context, Row, median, ms
from benchmarks.prompts import story_prompt
from benchmarks.timing import afollow, run_one, submit
from consumer import AsyncStreamReader
from producer import Producer
from workers.launcher import start_stack

NAME = "6 cancel"
WORKER_ARGS = ["--max-running", "2", "--concurrency", "4"]
LONG = {"max_tokens": 1024, "temperature": 0, "ignore_eos": True}
RUNNING_RECORDS = 5  # A and B have streamed this many records before C and the cancel


@dataclass
class Trial:
    cancel_s: float  # cancel() → A's final record at the reader
    step_s: float  # median gap between B's records while two decode
    reuse_s: float  # A's final record → C's first token at the reader
    ok: bool  # A ended cancelled, C started only after the cancel


def run(ctx: Context) -> list[Row]:
    trials_n = 1 if ctx.quick else 3
    ctx.stop_worker()
    stack = start_stack(ctx.url, extra_args=WORKER_ARGS)
    try:
        run_one(stack.producer, stack.reader, "Hi", max_tokens=2)  # warm-up
        trials = [asyncio.run(_trial(stack.producer, stack.url)) for _ in range(trials_n)]
    finally:
        stack.stop()
    cancel, step, reuse = (median([getattr(t, k) for t in trials]) for k in ("cancel_s", "step_s", "reuse_s"))
    ok = all(t.ok for t in trials)
    note = f"median of {trials_n}; worker {' '.join(WORKER_ARGS)}; reference column = decode step (B's record gaps)"
    return [
        Row(
            NAME,
            "cancel() -> final record",
            ms(cancel),
            ms(step),
            "ms",
            "<= 1 decode step",
            ok and cancel <= step,
            note=note,
            ref_label="decode step",
        ),
        Row(
            NAME,
            "A's final -> queued C's 1st token",
            ms(reuse),
            ms(step),
            "ms",
            "slot reused, <= 2 steps",
            ok and reuse <= 2 * step,
            note="C waits in the engine (concurrency 4) until A's slot frees",
            ref_label="decode step",
        ),
    ]


async def _trial(producer: Producer, url: str) -> Trial:
    async with AsyncStreamReader(url) as reader:
        a, b = (submit(producer, story_prompt(i), **LONG) for i in (1, 2))
        tasks = [asyncio.create_task(afollow(reader, t)) for t in (a, b)]
        while min(len(a.record_times), len(b.record_times)) < RUNNING_RECORDS:
            await asyncio.sleep(0.005)
        c = submit(producer, story_prompt(3), max_tokens=8, temperature=0, ignore_eos=True)
        tasks.append(asyncio.create_task(afollow(reader, c)))
        await asyncio.sleep(0.3)  # C is taken by the worker and waits in the engine
        cancelled_at = time.perf_counter()
        producer.cancel(a.request_id)
        await tasks[0]
        while c.first_text is None:
            await asyncio.sleep(0.001)
        producer.cancel(b.request_id)
        await asyncio.gather(*tasks)
    assert a.last is not None and c.first_text is not None
    gaps = [y - x for x, y in zip(b.record_times, b.record_times[1:], strict=False) if y < cancelled_at]
    ok = a.finish_reason == "cancelled" and c.first_text > cancelled_at
    return Trial(a.last - cancelled_at, median(gaps), c.first_text - a.last, ok)
