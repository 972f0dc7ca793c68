"""``GET /v1/models``: what the live workers serve, from their heartbeats (schemas/workers.py)."""

from __future__ import annotations

from fastapi import APIRouter

from consumer import AsyncStreamReader, index
from gateway.schema import ErrorResponse, ModelList
from gateway.state import Gateway
from schemas.workers import WorkerInfo


async def live_models(reader: AsyncStreamReader) -> list[WorkerInfo]:
    return [w for w in await index.workers_async(reader) if not w.draining]


def model_list(workers: list[WorkerInfo]) -> dict[str, object]:
    created: dict[str, int] = {}
    for w in workers:
        for name in [w.model, *w.aliases]:
            created[name] = min(created.get(name, int(w.started_at)), int(w.started_at))
    data = [{"id": m, "object": "model", "created": t, "owned_by": "tokenrelay"} for m, t in sorted(created.items())]
    return {"object": "list", "data": data}


def router(gw: Gateway) -> APIRouter:
    api = APIRouter()

    @api.get("/v1/models", response_model=ModelList, responses={503: {"model": ErrorResponse}})
    async def models() -> dict[str, object]:
        return model_list(await live_models(gw.clients.reader))

    return api
