"""`AsyncStreamReader`: the asyncio shell around :class:`consumer.core.ReaderCore`
(redis.asyncio.Redis or a Redis Cluster).  Same core, same decisions as :class:`consumer.StreamReader`."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator
from types import TracebackType
from typing import Any

from consumer import batch_io, index
from consumer.batch import BatchItemResult, BatchProgress
from consumer.connection import check_binary, describe
from consumer.core import START, Backoff, Done, Probe, Read, ReaderCore
from consumer.result import Result
from schemas import keys, settings
from schemas.cancel import CancelOutcome
from schemas.errors import RelayConnectionError, RequestNotFound
from schemas.records import Record
from schemas.redis_util import AsyncClient, connect_async, run_cancel_async, translate_redis_errors

_FINALIZER_ITERATIONS = 3  # two are needed; one spare


class AsyncStreamReader:
    """Reads request streams with XREAD; see the `consumer` package docstring."""

    def __init__(self, redis_url: str | None = None, *, client: AsyncClient | None = None) -> None:
        self._owns_client = client is None  # an injected client belongs to the caller
        if client is None:
            redis_url = settings.redis_url(redis_url)
            client = connect_async(redis_url)
        self._client: AsyncClient = client
        self.label = describe(redis_url, client)
        check_binary(client)
        # `break` out of `async for` does not close an async generator: once it is collected,
        # the loop closes it in a task of its own, a few iterations later.  aclose() closes the
        # streams still referenced and waits for those exit cancels, so none hits a closed client.
        self._open: weakref.WeakSet[AsyncGenerator[Record, None]] = weakref.WeakSet()
        self._exits: set[asyncio.Future[None]] = set()

    def stream(
        self,
        request_id: str,
        after: str = START,
        timeout_s: float | None = 30.0,
        cancel_on_exit: bool = False,
        *,
        queue_timeout_s: float | None = None,
    ) -> AsyncGenerator[Record, None]:
        """``async for`` the request's records from after entry id ``after`` until the last one."""
        # Built here, not in the generator, so that a bad argument raises at the call.
        # timeout_s: silence of a running request; queue_timeout_s: time waiting for a worker
        # (None: as long as the request exists).  See consumer/core.py.
        core = ReaderCore(request_id, after=after, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)
        gen = self._stream(core, cancel_on_exit)
        self._open.add(gen)
        return gen

    async def result(
        self, request_id: str, timeout_s: float | None = 30.0, *, queue_timeout_s: float | None = None
    ) -> Result:
        """Read the whole request and return it folded per choice."""
        core = ReaderCore(request_id, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)
        async for _ in self._stream(core, cancel_on_exit=False):
            pass
        return core.result()

    async def cancel(self, request_id: str) -> CancelOutcome:
        """Stop the request: a queued one ends at once (as ``cancelled``), a running one at
        its worker's next step, an ended one is left alone (see schemas/cancel.py).  Returns
        what happened; an unknown or expired id raises ``RequestNotFound``."""
        return await run_cancel_async(self._client, self.label, request_id, settings.ttl_s())

    # The request index and batches: consumer/index.py and consumer/batch_io.py.
    async def active(self, limit: int = 100) -> list[index.ActiveRequest]:
        """Queued and running requests, newest first (see schemas/index.py)."""
        return await index.active_async(self, limit)

    def events(self, after: str = "$") -> AsyncIterator[index.IndexEvent]:
        """The index's live feed of request and batch state changes (endless; break to stop)."""
        return index.events_async(self, after)

    async def batch(self, batch_id: str) -> BatchProgress:
        return await batch_io.batch_progress_async(self, batch_id)

    def batch_results(self, batch_id: str, timeout_s: float | None = None) -> AsyncIterator[BatchItemResult]:
        return batch_io.batch_results_async(self, batch_id, timeout_s)

    async def aclose(self) -> None:
        for gen in list(self._open):
            await _close_quietly(gen)
        # The loop's finalizer hook needs two iterations (create the task, run its first step)
        # before a dropped generator's exit cancel has registered itself in `_exits`.
        for _ in range(_FINALIZER_ITERATIONS):
            await asyncio.sleep(0)
        await asyncio.gather(*self._exits)
        if self._owns_client:
            # types-redis predates redis-py 5's aclose(); the ignore covers both stub sets.
            await self._client.aclose()  # type: ignore[attr-defined,unused-ignore]

    async def __aenter__(self) -> AsyncStreamReader:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def _stream(self, core: ReaderCore, cancel_on_exit: bool) -> AsyncGenerator[Record, None]:
        # The only loop: every decision is the core's, this just performs the I/O it asks for.
        # (One generator, not two nested: a `break` must not leave an inner one to the GC.)
        try:
            while not isinstance(action := core.next_action(time.monotonic()), Done):
                if isinstance(action, Backoff):
                    await asyncio.sleep(action.delay_s)
                    continue
                try:
                    if isinstance(action, Probe):
                        core.on_probe(*await self._probe(core.request_id))
                        continue
                    reply = await self._read(core.request_id, action)
                except RelayConnectionError as exc:
                    core.on_connection_error(exc, time.monotonic())
                    continue
                for record in core.on_reply(reply, time.monotonic()):
                    yield record
        finally:
            if cancel_on_exit and core.should_cancel_on_exit:
                await self._cancel_on_exit(core.request_id)

    async def _cancel_on_exit(self, request_id: str) -> None:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._exits.add(done)
        try:
            # Keys that expired meanwhile: nothing left to stop, and the error in flight (if
            # any) is the one to see.
            with contextlib.suppress(RequestNotFound):
                await self.cancel(request_id)
        finally:
            self._exits.discard(done)
            done.set_result(None)

    async def _probe(self, request_id: str) -> tuple[list[tuple[Any, Any]], bool, bool, bytes | None]:
        with translate_redis_errors(self.label):
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.xrevrange(keys.deltas_key(request_id), count=1)
                pipe.exists(keys.meta_key(request_id))
                pipe.exists(keys.lease_key(request_id))
                pipe.hget(keys.meta_key(request_id), "status")
                last, meta, lease, status = await pipe.execute()
        return list(last), bool(meta), bool(lease), status

    async def _read(self, request_id: str, action: Read) -> object:
        with translate_redis_errors(self.label):
            return await self._client.xread(
                {keys.deltas_key(request_id): action.after}, count=action.count, block=action.block_ms
            )


async def _close_quietly(gen: AsyncGenerator[Record, None]) -> None:
    # RuntimeError: it is running in another task right now; that task will finish or close it.
    with contextlib.suppress(RuntimeError):
        await gen.aclose()
