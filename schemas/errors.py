"""The one error tree of tokenrelay.

Every error a user can see derives from :class:`TokenRelayError`; errors from
redis-py, kombu or Celery are translated at the boundary into one of these::

    TokenRelayError
    ├── ValidationError      (also ValueError)    bad config or request, raised before enqueueing
    ├── SchemaError          (also ValueError)    a stream record that cannot be decoded
    ├── RelayConnectionError (also ConnectionError) Redis or the broker cannot be reached
    └── StreamError                                something about one request's stream
        ├── StreamTimeout    (also TimeoutError)   no record arrived within timeout_s
        ├── RequestNotFound  (also LookupError)    unknown or expired request id
        └── GenerationFailed                       the request ended with finish_reason="error"
    └── WorkerError                                inside a worker process
        ├── EngineFull       (also RuntimeError)   the engine's queue is full (max_queued)
        └── WorkerStartError (also RuntimeError)   a worker process could not start
"""

from __future__ import annotations

from typing import Any


class TokenRelayError(Exception):
    """Root of every tokenrelay error."""


class ValidationError(TokenRelayError, ValueError):
    """A bad generation config or request; ``field`` names the culprit."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SchemaError(TokenRelayError, ValueError):
    """A stream record that is not a valid tokenrelay record of a known version."""


class RelayConnectionError(TokenRelayError, ConnectionError):
    """Redis (streams) or the Celery broker could not be reached."""


class StreamError(TokenRelayError):
    """Trouble with one request's stream; ``request_id`` names it."""

    def __init__(self, request_id: str, message: str) -> None:
        self.request_id = request_id
        super().__init__(message)


class StreamTimeout(StreamError, TimeoutError):
    """No record arrived for ``timeout_s`` seconds: the stream did not end cleanly."""


class RequestNotFound(StreamError, LookupError):
    """The request id is unknown, or its keys have expired."""


class GenerationFailed(StreamError):
    """The worker could not serve the request; ``error_type`` and ``error_message`` say why."""

    def __init__(self, request_id: str, error_type: str, error_message: str, result: Any = None) -> None:
        self.error_type = error_type
        self.error_message = error_message
        self.result = result
        super().__init__(request_id, f"request {request_id} failed: {error_type}: {error_message}")


class WorkerError(TokenRelayError):
    """Something inside a worker process."""


class EngineFull(WorkerError, RuntimeError):
    """More requests waiting than ``max_queued``; try again later."""


class WorkerStartError(WorkerError, RuntimeError):
    """A worker process exited or did not become ready."""
