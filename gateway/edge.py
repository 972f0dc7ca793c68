"""The ASGI middleware every request passes: API keys, ``X-Request-Id``, request counts.

A pure ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``: that one re-pipes
streaming bodies through a memory stream, which would hide a client's disconnect from the
SSE responses (and so from cancel-on-disconnect).
"""

from __future__ import annotations

import hmac
import re

from starlette.datastructures import Headers, MutableHeaders, QueryParams
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import ApiError
from gateway.metrics import Metrics, outcome_of
from schemas import keys

# Probes and the dashboard's static page need no key (a browser cannot send one with a page load).
PUBLIC = re.compile(r"^/(healthz|readyz|metrics|openapi\.json|docs|docs/.*|dashboard/[^/]+)?$")


def authorized(scope: Scope, api_keys: list[str]) -> bool:
    """``Authorization: Bearer KEY``, or ``?api_key=KEY`` (EventSource cannot send headers)."""
    auth = Headers(scope=scope).get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
    given = given or QueryParams(scope.get("query_string", b"").decode("latin-1")).get("api_key", "")
    return bool(given) and any(hmac.compare_digest(given.encode(), k.encode()) for k in api_keys)


def correlation_id(scope: Scope) -> str:
    """The caller's X-Request-Id when it is a valid id, else a fresh one."""
    given = Headers(scope=scope).get("x-request-id", "")
    try:
        return keys.check_request_id(given)
    except ValueError:
        return keys.new_request_id()


class Edge:
    def __init__(self, app: ASGIApp, api_keys: list[str], metrics: Metrics) -> None:
        self.app = app
        self.api_keys = api_keys
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fallback = correlation_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-Id", fallback)
                route = scope.get("route")
                endpoint = getattr(route, "path", "unmatched")
                self.metrics.requests.labels(endpoint, outcome_of(message["status"])).inc()
            await send(message)

        if self.api_keys and not PUBLIC.match(scope["path"]) and not authorized(scope, self.api_keys):
            error = ApiError(401, "missing or wrong API key (Authorization: Bearer KEY)", code="invalid_api_key")
            await error.response()(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)
