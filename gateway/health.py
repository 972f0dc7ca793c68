"""``GET /healthz`` (the process answers), ``GET /readyz`` (Redis and the broker answer, and
at least one live worker) and ``GET /metrics`` (Prometheus text)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.concurrency import run_in_threadpool

from broker.app import SENTINEL_TRANSPORT, broker_connection_args
from gateway.errors import RETRY_AFTER_S
from gateway.models import live_models
from gateway.schema import Health
from gateway.state import Gateway
from schemas.errors import TokenRelayError
from schemas.sentinel_url import is_sentinel_url

CHECK_TIMEOUT_S = 2.0


def broker_reachable(url: str) -> bool:
    """One connection attempt, no retries (kombu's default would retry for a long time).
    A Sentinel URL goes in as the Celery app takes it (its master's name as an option)."""
    kombu_url, options = broker_connection_args(url)
    transport = SENTINEL_TRANSPORT if is_sentinel_url(url) else None
    try:
        with Connection(kombu_url, transport=transport, connect_timeout=CHECK_TIMEOUT_S,
                        transport_options={**options, "max_retries": 0}) as conn:  # fmt: skip
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=CHECK_TIMEOUT_S)
            conn.default_channel  # noqa: B018 - the Redis transport connects only here
        return True
    except Exception:  # kombu raises many types; all mean "not reachable now"
        return False


async def checks(gw: Gateway) -> dict[str, Any]:
    out: dict[str, Any] = {}
    try:
        workers = await asyncio.wait_for(live_models(gw.clients.reader), CHECK_TIMEOUT_S)
        out["redis"], out["workers"] = "ok", len(workers)
    except (TokenRelayError, asyncio.TimeoutError) as exc:
        out["redis"], out["workers"] = f"unreachable: {exc}", 0
    out["broker"] = "ok" if await run_in_threadpool(broker_reachable, gw.clients.broker_url) else "unreachable"
    return out


def router(gw: Gateway) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "checks": {}}

    @api.get("/readyz", response_model=Health, responses={503: {"model": Health}})
    async def readyz() -> JSONResponse:
        found = await checks(gw)
        ready = found["redis"] == "ok" and found["broker"] == "ok" and found["workers"] > 0
        if ready:
            return JSONResponse({"status": "ready", "checks": found})
        return JSONResponse({"status": "not ready", "checks": found}, 503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @api.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def metrics() -> Response:
        return Response(gw.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return api
