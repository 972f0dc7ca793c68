"""The HTTP gateway: OpenAI's API over resumable Server-Sent Events (``tokenrelay serve``).

Theory of operation
-------------------
The gateway is a thin, stateless shell: everything it knows is in Redis, so any number of
gateways may serve the same requests and a restart loses nothing.

- **Create** (``POST /v1/completions``, ``/v1/chat/completions``; gateway/create.py): the
  OpenAI body is validated by pydantic models (gateway/schema.py) and translated into a
  ``GenerationConfig`` (gateway/translate.py); a field it cannot honour is a 400 naming it.
  The request is submitted with ``producer.Producer`` (sync: in the threadpool) and the API
  that created it is noted in its meta hash.  Then: ``background`` → 202 with the id;
  ``stream`` → SSE; else the whole result as OpenAI's object.
- **Read**: every stream read goes through ``consumer.AsyncStreamReader`` (one reader core
  for the whole project).  gateway/render.py turns records into OpenAI chunks; gateway/sse.py
  frames them with ``id: <stream entry id>``, adds a keep-alive comment every 15 s of
  silence and ends with ``data: [DONE]`` (after an error event when the request failed).
- **Resume**: the SSE id *is* the stream's entry id, the reader's cursor.
  ``GET /v1/requests/{id}/events`` with ``Last-Event-ID`` (or ``?after=``) replays exactly
  the events after it, then follows live (gateway/requests_api.py).
- **Cancel**: ``POST /v1/requests/{id}/cancel`` sets the cancel key; a client that
  disconnects from a non-background create stream cancels its request (the response's
  cleanup runs shielded from the cancellation that the disconnect causes).
- **Errors** (gateway/errors.py, the one place): tokenrelay's error tree and the workers'
  closed set of ``error.type`` map to HTTP statuses and OpenAI error objects; Redis or the
  broker down is a 503 with ``Retry-After``; nothing leaks a traceback.
- **Edge** (gateway/edge.py): API keys (``TOKENRELAY_API_KEYS``), ``X-Request-Id`` on every
  response (the tokenrelay request id where there is one) and request counts for
  ``/metrics`` (gateway/metrics.py).  ``/healthz``, ``/readyz`` and ``/v1/models`` (from the
  workers' heartbeats) are in gateway/health.py and gateway/models.py.

The gateway never imports torch (tests/unit/test_imports.py checks it).
"""

from gateway.app import create_app

__all__ = ["create_app"]
