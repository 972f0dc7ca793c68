"""Scenario 5: the stream layer alone (no model): `StreamSink.publish` → readers.

Throughput: the publisher writes as fast as it can; records/s from the first publish to the
last record at the reader(s).  The publisher alone and the reader alone (re-reading the
finished stream) are shown in the notes, to tell which side limits.  Latency: paced batches,
publish time → the moment the reader yields the record.  100 readers are `AsyncStreamReader`
streams in one event loop (one process, separate from the publisher's).
"""

from __future__ import annotations

import asyncio
import time

from benchmarks.common import Context, Row, ms, percentile
from benchmarks.stream_load import Load, Publisher, Received, new_stream, read_many, read_one
from consumer import StreamReader

NAME = "5 stream layer"
GOAL_RATE = 200_000
GOAL_P99_MS = 5.0
MANY = 100


def run(ctx: Context) -> list[Row]:
    q = ctx.quick
    bulk = Load(records=20_000 if q else 100_000, batch=256)
    bulk_many = Load(records=2_000 if q else 5_000, batch=256)
    paced = Load(records=200 if q else 1_000, batch=4, interval_s=0.01)
    return [
        _throughput(ctx.url, bulk, 1),
        _throughput(ctx.url, bulk_many, MANY),
        *_latency(ctx.url, paced, 1),
        *_latency(ctx.url, paced, MANY),
    ]


def _throughput(url: str, load: Load, readers: int) -> Row:
    rid, got, pub_s = measure(url, load, readers)
    rate = sum(g.count for g in got) / (max(g.last_at for g in got) - min(g.first_stamp for g in got))
    note = f"{load.records:,} records, batches of {load.batch}; StreamSink alone {load.records / pub_s:,.0f}/s"
    if readers == 1:
        note += f"; StreamReader alone (re-reading the stream) {_reader_alone(url, rid, load.records):,.0f}/s"
        return Row(NAME, "records/s, 1 reader", rate, None, "rec/s", f">= {GOAL_RATE:,}", rate >= GOAL_RATE, note)
    return Row(NAME, f"records/s, {readers} readers (aggregate)", rate, None, "rec/s", note=note)


def _latency(url: str, load: Load, readers: int) -> list[Row]:
    _rid, got, _ = measure(url, load, readers)
    lat = [x for g in got for x in g.latencies]
    p50, p99 = ms(percentile(lat, 50)), ms(percentile(lat, 99))
    assert p50 is not None and p99 is not None
    note = f"batches of {load.batch} every {load.interval_s * 1000:g} ms, {load.records} records"
    if readers == 1:
        return [
            Row(NAME, "latency p50, 1 reader", p50, None, "ms", note=note),
            Row(NAME, "latency p99, 1 reader", p99, None, "ms"),
        ]
    note += f"; {readers} AsyncStreamReader streams in one event loop"
    return [
        Row(NAME, f"latency p50, {readers} readers", p50, None, "ms", note=note),
        Row(NAME, f"latency p99, {readers} readers", p99, None, "ms", f"< {GOAL_P99_MS:g} ms", p99 < GOAL_P99_MS),
    ]


def measure(url: str, load: Load, readers: int) -> tuple[str, list[Received], float]:
    """Publish ``load`` into a new stream from a publisher process while ``readers`` read it:
    the request id, what each reader received, and the publisher's own time (scenario 13
    runs it on a cluster too)."""
    rid = new_stream(url)
    pub = Publisher(url, rid, load)
    got = [read_one(url, rid, pub)] if readers == 1 else asyncio.run(read_many(url, rid, pub, readers))
    return rid, got, pub.finish()


def _reader_alone(url: str, rid: str, records: int) -> float:
    started = time.perf_counter()
    with StreamReader(url) as reader:
        count = sum(1 for _ in reader.stream(rid, timeout_s=60))
    assert count == records
    return count / (time.perf_counter() - started)
