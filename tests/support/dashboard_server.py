"""The batch and dashboard routes on a real uvicorn server in a thread (tests, screenshots).

The gateway app (gateway/) registers the same routers; this builds only what the dashboard
needs, so its tests do not depend on the rest of the gateway.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import uvicorn
from fastapi import FastAPI

from consumer import AsyncStreamReader
from gateway import batches, dashboard
from producer import Producer


def make_app(redis_url: str) -> FastAPI:
    shared: dict[str, object] = {}

    def reader() -> AsyncStreamReader:
        # Created on first use, inside the server's event loop.
        if "reader" not in shared:
            shared["reader"] = AsyncStreamReader(redis_url)
        return shared["reader"]  # type: ignore[return-value]

    def producer() -> Producer:
        if "producer" not in shared:
            shared["producer"] = Producer(redis_url, redis_url)
        return shared["producer"]  # type: ignore[return-value]

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        made = shared.get("reader")
        if isinstance(made, AsyncStreamReader):  # its connections, before the loop closes
            await made.aclose()

    app = FastAPI(lifespan=lifespan)
    app.include_router(batches.router(producer, reader))
    app.include_router(dashboard.router(reader))
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve(redis_url: str) -> Iterator[str]:
    port = free_port()
    # The plain asyncio loop, not uvloop (installed beside vLLM): when this in-test server stops,
    # uvloop reports the browser's still-open keep-alive sockets as unclosed resources, which
    # pytest's filterwarnings=error turns into errors of whatever test runs next.
    config = uvicorn.Config(make_app(redis_url), host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
