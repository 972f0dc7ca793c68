"""The gateway's connections: one ``AsyncStreamReader`` (every stream read goes through it)
and one ``Producer`` (sync: its calls run in the threadpool).  Both are created on first use,
inside the server's event loop, and hold no request state: everything lives in Redis."""

from __future__ import annotations

import threading
from typing import Any

from starlette.concurrency import run_in_threadpool

from consumer import AsyncStreamReader
from producer import Producer
from schemas import settings


class Clients:
    def __init__(self, redis_url: str | None = None, broker_url: str | None = None) -> None:
        self.redis_url = settings.redis_url(redis_url)
        self.broker_url = settings.broker_url(broker_url, self.redis_url)
        self._reader: AsyncStreamReader | None = None
        self._producer: Producer | None = None
        self._lock = threading.Lock()

    @property
    def reader(self) -> AsyncStreamReader:
        if self._reader is None:
            self._reader = AsyncStreamReader(self.redis_url)
        return self._reader

    def sync_producer(self) -> Producer:
        """The one Producer (called from threadpool threads: created under a lock)."""
        with self._lock:
            if self._producer is None:
                self._producer = Producer(self.redis_url, self.broker_url)
        return self._producer

    async def submit(self, prompt: str | None, **kwargs: Any) -> str:
        return await run_in_threadpool(lambda: self.sync_producer().submit(prompt, **kwargs))

    async def aclose(self) -> None:
        if self._reader is not None:
            await self._reader.aclose()
        if self._producer is not None:
            await run_in_threadpool(self._producer.close)
