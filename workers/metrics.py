"""Worker metrics in Prometheus text: ``tokenrelay worker --metrics-port PORT``.

The set follows vLLM's (``vllm:num_requests_running``, ``vllm:time_per_output_token`` ...)
under the ``tokenrelay_worker_`` prefix.  Two kinds:

- read when scraped (a custom collector; nothing happens per step): running and waiting
  requests, rows in the decode batch, KV cache bytes, tokens/s over the last 5 s, leases held;
- updated by the engine thread once per step (a histogram observe and two counter adds, a few
  microseconds against steps of tens of milliseconds): step time, batch rows per step,
  generated tokens, requests settled by outcome, takeovers.

The server is prometheus_client's own (a daemon thread); it never touches torch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from workers.runner import EngineRunner

PREFIX = "tokenrelay_worker_"
STEP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
OUTCOMES = ("finished", "superseded", "handed_over", "failed")


class WorkerMetrics:
    """The runner's observer (see `workers.runner.RunnerObserver`) and a scrape-time collector."""

    def __init__(self, model: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.model = model
        labels = ["model"]
        self.step_seconds = Histogram(
            PREFIX + "step_seconds", "Time of one engine step (forward pass, sampling, detokenizing)",
            labels, buckets=STEP_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.batch_rows = Histogram(
            PREFIX + "batch_rows", "Rows (choices) decoded together in one step", labels,
            buckets=ROW_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.tokens = Counter(PREFIX + "generation_tokens", "Tokens generated", labels, registry=self.registry)
        self.settled = Counter(
            PREFIX + "requests_settled", "Requests this worker is done with, by outcome "
            "(finished: its last record is written; superseded: lease lost; handed_over; failed)",
            [*labels, "outcome"], registry=self.registry,
        )  # fmt: skip
        self.takeovers = Counter(
            PREFIX + "takeovers", "Requests taken over from a dead or departed worker", labels, registry=self.registry
        )
        self._runner: EngineRunner | None = None
        # Children exist from the start, so a scrape shows zeros rather than nothing.
        for metric in (self.step_seconds, self.batch_rows, self.tokens, self.takeovers):
            metric.labels(model)
        for outcome in OUTCOMES:
            self.settled.labels(model, outcome)

    def watch(self, runner: EngineRunner) -> WorkerMetrics:
        """Read the runner's load at scrape time."""
        self._runner = runner
        self.registry.register(_LoadCollector(self))
        return self

    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Start the HTTP server on a daemon thread; returns the port (``0`` picks one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)

    # -- RunnerObserver ------------------------------------------------------------------

    def on_step(self, seconds: float, rows: int, tokens: int) -> None:
        self.step_seconds.labels(self.model).observe(seconds)
        self.batch_rows.labels(self.model).observe(rows)
        if tokens:
            self.tokens.labels(self.model).inc(tokens)

    def on_settled(self, outcome: str, count: int) -> None:
        self.settled.labels(self.model, outcome).inc(count)

    def on_takeover(self) -> None:
        self.takeovers.labels(self.model).inc()


class _LoadCollector(Collector):
    def __init__(self, metrics: WorkerMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[GaugeMetricFamily]:
        runner = self.metrics._runner
        if runner is None:
            return
        running, waiting = runner.load()
        engine = runner._engine
        values = {
            "running_requests": ("Requests in the decode batch", running),
            "waiting_requests": ("Requests admitted but waiting for a batch slot", waiting),
            "batch_rows_now": ("Rows (choices) in the decode batch now", len(engine.rows) if engine else 0),
            "kv_cache_bytes": ("Bytes held by the batch KV cache", engine.kv_cache_bytes() if engine else 0),
            "tokens_per_second": ("Tokens generated per second over the last 5 s", runner.tokens_per_s()),
            "leases_held": ("Requests whose lease this worker holds", len(runner.sink.book.held)),
            "draining": ("1 while the worker shuts down warmly", int(runner.draining)),
        }
        for name, (doc, value) in values.items():
            family = GaugeMetricFamily(PREFIX + name, doc, labels=["model"])
            family.add_metric([self.metrics.model], float(value))
            yield family
