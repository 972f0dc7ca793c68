"""``create_app``: the gateway's FastAPI app (see the package docstring)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

from fastapi import FastAPI

from gateway import create, errors, health, models, requests_api
from gateway.clients import Clients
from gateway.edge import Edge
from gateway.state import KEEPALIVE_S, Gateway
from schemas import settings
from schemas.heap import freeze_startup_heap


def optional_module(name: str) -> ModuleType | None:
    """The dashboard and batch routes live in their own modules (another part of the
    gateway); the API works without them."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def create_app(
    redis_url: str | None = None,
    broker_url: str | None = None,
    *,
    keepalive_s: float = KEEPALIVE_S,
    api_keys: list[str] | None = None,
) -> FastAPI:
    gw = Gateway(Clients(redis_url, broker_url), keepalive_s=keepalive_s,
                 api_keys=settings.api_keys() if api_keys is None else api_keys)  # fmt: skip

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        freeze_startup_heap()  # a full GC walk of the start-up heap paused every stream ~30 ms
        yield
        await gw.clients.aclose()

    app = FastAPI(title="tokenrelay gateway", version="1", lifespan=lifespan)
    errors.install(app)
    for module in (create, requests_api, models, health):
        app.include_router(module.router(gw))
    add_optional_routes(app, gw)
    app.add_middleware(Edge, api_keys=gw.api_keys, metrics=gw.metrics)
    app.state.gateway = gw
    honest_openapi(app)
    return app


def honest_openapi(app: FastAPI) -> None:
    """FastAPI documents a 422 on every operation with input; the gateway answers bad input
    with a 400 (OpenAI's convention, gateway/errors.py), so the 422s are taken out."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_optional_routes(app: FastAPI, gw: Gateway) -> None:
    batches = optional_module("gateway.batches")
    if batches is not None:
        app.include_router(batches.router(gw.clients.sync_producer, lambda: gw.clients.reader))
    dashboard = optional_module("gateway.dashboard")
    if dashboard is not None:
        app.include_router(dashboard.router(lambda: gw.clients.reader))
