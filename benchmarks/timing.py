"""Timing one request through the pipeline, as a user sees it: submit → records at a reader.

Clocks are ``time.perf_counter`` in the benchmark process; ``usage`` comes from the worker.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from consumer import AsyncStreamReader, StreamReader
from producer import Producer
from schemas.records import Record, Usage

READ_TIMEOUT_S = 300.0  # generous: other jobs may share the machine


@dataclass
class Trace:
    """What a reader saw of one request."""

    request_id: str
    submitted: float
    first_text: float | None = None
    first_record: float | None = None
    last: float | None = None
    record_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    usage: Usage | None = None
    finish_reason: str | None = None

    def see(self, record: Record, now: float) -> None:
        if self.first_record is None:
            self.first_record = now
        if record.text and self.first_text is None:
            self.first_text = now
        self.record_times.append(now)
        self.token_ids.extend(record.token_ids)
        self.finish_reason = record.finish_reason or self.finish_reason
        if record.usage is not None:
            self.usage = record.usage
            self.last = now

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_text is None else self.first_text - self.submitted

    @property
    def elapsed_s(self) -> float:
        assert self.last is not None, "stream did not end"
        return self.last - self.submitted

    @property
    def tokens(self) -> int:
        return len(self.token_ids)


def submit(producer: Producer, prompt: str, **config: Any) -> Trace:
    started = time.perf_counter()
    rid = producer.submit(prompt, **config)
    return Trace(rid, started)


def follow(reader: StreamReader, trace: Trace) -> Trace:
    for record in reader.stream(trace.request_id, timeout_s=READ_TIMEOUT_S):
        trace.see(record, time.perf_counter())
    return trace


async def afollow(reader: AsyncStreamReader, trace: Trace) -> Trace:
    async for record in reader.stream(trace.request_id, timeout_s=READ_TIMEOUT_S):
        trace.see(record, time.perf_counter())
    return trace


def run_one(producer: Producer, reader: StreamReader, prompt: str, **config: Any) -> Trace:
    return follow(reader, submit(producer, prompt, **config))
