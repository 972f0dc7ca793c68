"""`tokenrelay worker --metrics-port`: Prometheus text from a real worker, read while a
request runs and after it ended."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer import StreamReader
from producer import Producer
from tests.support.rabbit import free_port
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration


def scrape(port: int) -> dict[str, float]:
    """sample name (+ outcome label) -> value, for this worker's own metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.startswith("tokenrelay_worker_"):
                key = s.name + (f"{{{s.labels['outcome']}}}" if "outcome" in s.labels else "")
                out[key] = out.get(key, 0.0) + s.value
    return out


def test_metrics_while_running_and_after(server_factory: object, tiny_model_dir: Path) -> None:
    url = server_factory()  # type: ignore[operator]
    port, queue = free_port(), f"tokenrelay-metrics-{uuid.uuid4().hex[:8]}"
    args = ["--queue", queue, "--metrics-port", str(port), "--threads", "1"]
    with WorkerProcess(redis_url=url, model=str(tiny_model_dir), extra_args=args) as worker:
        worker.wait_ready()
        assert f"metrics on http://127.0.0.1:{port}/metrics" in worker.log_tail(100)
        assert "start-up objects out of the garbage collector's walks" in worker.log_tail(100)  # gc.freeze
        producer, reader = Producer(url), StreamReader(url)
        idle = scrape(port)
        assert idle["tokenrelay_worker_running_requests"] == 0 and idle["tokenrelay_worker_kv_cache_bytes"] == 0

        # Four choices of 400 tokens: long enough to be read while it runs.
        rid = producer.submit("metrics", max_tokens=400, n=4, ignore_eos=True, queue=queue)
        stream = reader.stream(rid, after="0", timeout_s=60)
        next(iter(stream))
        busy = scrape(port)
        assert busy["tokenrelay_worker_running_requests"] == 1
        assert busy["tokenrelay_worker_batch_rows_now"] == 4
        assert busy["tokenrelay_worker_kv_cache_bytes"] > 0
        assert busy["tokenrelay_worker_leases_held"] == 1
        for _ in stream:
            pass
        result = reader.result(rid, timeout_s=5)

        done = scrape(port)
        producer.close()
        reader.close()
    assert result.usage is not None
    assert done["tokenrelay_worker_generation_tokens_total"] == result.usage.completion_tokens == 1600
    assert done["tokenrelay_worker_requests_settled_total{finished}"] == 1
    assert done["tokenrelay_worker_step_seconds_count"] >= 400
    assert done["tokenrelay_worker_step_seconds_sum"] > 0
    assert done["tokenrelay_worker_running_requests"] == 0
    assert done["tokenrelay_worker_takeovers_total"] == 0
