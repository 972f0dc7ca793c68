"""The gateway's Prometheus metrics (``GET /metrics``); names start with ``tokenrelay_gateway_``.

One registry per app (not prometheus_client's global one), so that several apps in one
process (tests) never collide.  TTFT and end-to-end times are measured here, at the edge:
from the submit to the first record sent to the client, and to the last.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tokenrelay_gateway_requests", "HTTP requests by endpoint and outcome", ["endpoint", "outcome"], registry=r
        )
        self.streams = Counter("tokenrelay_gateway_streams", "SSE streams by how they ended", ["outcome"], registry=r)
        self.tokens = Counter("tokenrelay_gateway_tokens", "tokens of finished requests", ["kind"], registry=r)
        self.ttft = Histogram(
            "tokenrelay_gateway_ttft_seconds", "submit to the first record sent", buckets=LATENCY_BUCKETS, registry=r
        )
        self.e2e = Histogram(
            "tokenrelay_gateway_e2e_seconds", "submit to the last record", buckets=LATENCY_BUCKETS, registry=r
        )
        self.active_streams = Gauge(
            "tokenrelay_gateway_active_streams", "generation streams being sent (create endpoints)", registry=r
        )
        self.sse_clients = Gauge("tokenrelay_gateway_sse_clients", "open SSE responses of any kind", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def outcome_of(status: int) -> str:
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "unauthorized"
    if status == 404:
        return "not_found"
    if status < 500:
        return "bad_request"
    if status == 503:
        return "unavailable"
    return "error"
