"""What every route needs: the clients, the metrics and the options (one per app)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.clients import Clients
from gateway.metrics import Metrics

KEEPALIVE_S = 15.0
RESULT_TIMEOUT_S = 600.0  # a non-streaming call gives up (504) after this long without a record


@dataclass
class Gateway:
    clients: Clients
    metrics: Metrics = field(default_factory=Metrics)
    keepalive_s: float = KEEPALIVE_S
    api_keys: list[str] = field(default_factory=list)
