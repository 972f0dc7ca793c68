"""Every error the gateway answers, in OpenAI's error object, decided in this one module.

- :data:`WORKER_ERRORS` maps each ``error.type`` a worker may write (the closed set in
  schemas/error_types.py) to an HTTP status and an OpenAI error type.
- :func:`from_exception` maps tokenrelay's error tree (schemas/errors.py) the same way:
  ``ValidationError`` 400 naming the field, ``RequestNotFound`` 404, ``RelayConnectionError``
  503 with ``Retry-After``, ``StreamTimeout`` 504, ``GenerationFailed`` by its error type.
- FastAPI's own validation errors become a 400 naming the field; anything unexpected is a 500
  with a generic message (the traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from schemas.error_types import ERROR_TYPES, check_error_type
from schemas.errors import (
    GenerationFailed,
    RelayConnectionError,
    RequestNotFound,
    SchemaError,
    StreamTimeout,
    TokenRelayError,
    ValidationError,
)

log = logging.getLogger("tokenrelay.gateway")

RETRY_AFTER_S = 5
INVALID = "invalid_request_error"
SERVER = "server_error"

# error.type written by a worker -> (HTTP status, OpenAI error type, OpenAI error code)
WORKER_ERRORS: dict[str, tuple[int, str, str | None]] = {
    "invalid_request": (400, INVALID, None),
    "unknown_model": (404, INVALID, "model_not_found"),
    "no_chat_template": (400, INVALID, None),
    "tokenizer_error": (400, INVALID, None),
    "empty_prompt": (400, INVALID, None),
    "prompt_too_long": (400, INVALID, "context_length_exceeded"),
    "engine_full": (503, SERVER, "engine_full"),
    # The gateway's upstream (the worker) failed: 502, as any gateway reports its upstream.
    "model_error": (502, SERVER, "model_error"),
    "too_many_attempts": (502, SERVER, "too_many_attempts"),
    "expired": (504, "timeout", "expired"),
    "internal": (502, SERVER, "internal"),
}
assert set(WORKER_ERRORS) == set(ERROR_TYPES), "every worker error type needs an HTTP mapping"


@dataclass
class ApiError(Exception):
    """An error answer: raise it anywhere in a route."""

    status: int
    message: str
    type: str = INVALID
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(RETRY_AFTER_S)} if self.status in (429, 503) else {}

    def response(self, request_id: str | None = None) -> JSONResponse:
        headers = self.headers()
        if request_id:
            headers["X-Request-Id"] = request_id
        return JSONResponse(self.body(), self.status, headers=headers)


def from_worker_error(error_type: str, message: str) -> ApiError:
    status, kind, code = WORKER_ERRORS[check_error_type(error_type)]
    return ApiError(status, message, kind, code=code or error_type)


def from_exception(exc: TokenRelayError) -> ApiError:
    if isinstance(exc, ValidationError):
        return ApiError(400, str(exc), INVALID, param=exc.field)
    if isinstance(exc, RequestNotFound):
        return ApiError(404, str(exc), INVALID, code="not_found")
    if isinstance(exc, RelayConnectionError):
        return ApiError(503, str(exc), SERVER, code="unavailable")
    if isinstance(exc, StreamTimeout):
        return ApiError(504, str(exc), "timeout", code="timeout")
    if isinstance(exc, GenerationFailed):
        return from_worker_error(exc.error_type, exc.error_message)
    if isinstance(exc, SchemaError):
        return ApiError(502, str(exc), SERVER, code="bad_record")
    return ApiError(502, str(exc), SERVER)


def from_validation(exc: RequestValidationError) -> ApiError:
    """FastAPI's 422 list -> one 400 naming the first bad field (``messages.0.role``)."""
    first = exc.errors()[0] if exc.errors() else {"loc": ("body",), "msg": "invalid body", "type": ""}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
    # Unions report each branch (``prompt.str``); the branch names are noise to a client.
    field = ".".join(p for p in loc if not _is_type_name(p)) or "body"
    if first.get("type") == "extra_forbidden":
        return ApiError(400, f"{field}: unknown or unsupported field", INVALID, param=field)
    return ApiError(400, f"{field}: {first.get('msg', 'invalid')}", INVALID, param=field)


def _is_type_name(part: str) -> bool:
    return part in ("str", "int", "float", "bool", "list[str]", "list[int]", "list[list[int]]") or "[" in part


def install(app: FastAPI) -> None:
    """Exception handlers: every error leaves as an OpenAI error object."""

    async def api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return exc.response(getattr(request.state, "request_id", None))

    async def relay_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, TokenRelayError)
        return from_exception(exc).response(getattr(request.state, "request_id", None))

    async def bad_body(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        return from_validation(exc).response()

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        kind = INVALID if exc.status_code < 500 else SERVER
        return ApiError(exc.status_code, str(exc.detail), kind).response()

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return ApiError(500, "internal gateway error (see the gateway's log)", SERVER).response()

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(TokenRelayError, relay_error)
    app.add_exception_handler(RequestValidationError, bad_body)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
