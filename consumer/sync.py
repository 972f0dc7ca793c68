"""`StreamReader`: the blocking shell around :class:`consumer.core.ReaderCore` (redis.Redis or a Redis Cluster)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
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
from schemas.redis_util import SyncClient, connect, run_cancel, translate_redis_errors


class StreamReader:
    """Reads request streams with XREAD; see the `consumer` package docstring."""

    def __init__(self, redis_url: str | None = None, *, client: SyncClient | None = None) -> None:
        self._owns_client = client is None  # an injected client belongs to the caller
        if client is None:
            redis_url = settings.redis_url(redis_url)
            client = connect(redis_url)
        self._client: SyncClient = client
        self.label = describe(redis_url, client)
        check_binary(client)

    def stream(
        self,
        request_id: str,
        after: str = START,
        timeout_s: float | None = 30.0,
        cancel_on_exit: bool = False,
        *,
        queue_timeout_s: float | None = None,
    ) -> Iterator[Record]:
        """Yield the request's records from after entry id ``after`` until the last one."""
        # Built here, not in the generator, so that a bad argument raises at the call.
        # timeout_s: silence of a running request; queue_timeout_s: time waiting for a worker
        # (None: as long as the request exists).  See consumer/core.py.
        core = ReaderCore(request_id, after=after, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)
        return self._stream(core, cancel_on_exit)

    def result(
        self, request_id: str, timeout_s: float | None = 30.0, *, queue_timeout_s: float | None = None
    ) -> Result:
        """Read the whole request and return it folded per choice."""
        core = ReaderCore(request_id, timeout_s=timeout_s, queue_timeout_s=queue_timeout_s)
        for _ in self._stream(core, cancel_on_exit=False):
            pass
        return core.result()

    def cancel(self, request_id: str) -> CancelOutcome:
        """Stop the request: a queued one ends at once (as ``cancelled``), a running one at
        its worker's next step, an ended one is left alone (see schemas/cancel.py).  Returns
        what happened; an unknown or expired id raises ``RequestNotFound``."""
        return run_cancel(self._client, self.label, request_id, settings.ttl_s())

    # The request index and batches: consumer/index.py and consumer/batch_io.py.
    def active(self, limit: int = 100) -> list[index.ActiveRequest]:
        """Queued and running requests, newest first (see schemas/index.py)."""
        return index.active(self, limit)

    def events(self, after: str = "$") -> Iterator[index.IndexEvent]:
        """The index's live feed of request and batch state changes (endless; break to stop)."""
        return index.events(self, after)

    def batch(self, batch_id: str) -> BatchProgress:
        """Progress of a batch: total, done, failed, cancelled, tokens, ..."""
        return batch_io.batch_progress(self, batch_id)

    def batch_results(self, batch_id: str, timeout_s: float | None = None) -> Iterator[BatchItemResult]:
        """Each item's result in input order (waits for items still queued or running)."""
        return batch_io.batch_results(self, batch_id, timeout_s)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def _stream(self, core: ReaderCore, cancel_on_exit: bool) -> Iterator[Record]:
        # The only loop: every decision is the core's, this just performs the I/O it asks for.
        try:
            while not isinstance(action := core.next_action(time.monotonic()), Done):
                if isinstance(action, Backoff):
                    time.sleep(action.delay_s)
                    continue
                try:
                    if isinstance(action, Probe):
                        core.on_probe(*self._probe(core.request_id))
                        continue
                    reply = self._read(core.request_id, action)
                except RelayConnectionError as exc:
                    core.on_connection_error(exc, time.monotonic())
                    continue
                yield from core.on_reply(reply, time.monotonic())
        finally:
            if cancel_on_exit and core.should_cancel_on_exit:
                # Keys that expired meanwhile: nothing left to stop, and the error in flight
                # (if any) is the one to see.
                with contextlib.suppress(RequestNotFound):
                    self.cancel(core.request_id)

    def _probe(self, request_id: str) -> tuple[list[tuple[Any, Any]], bool, bool, bytes | None]:
        with translate_redis_errors(self.label), self._client.pipeline(transaction=False) as pipe:
            pipe.xrevrange(keys.deltas_key(request_id), count=1)
            pipe.exists(keys.meta_key(request_id))
            pipe.exists(keys.lease_key(request_id))
            pipe.hget(keys.meta_key(request_id), "status")
            last, meta, lease, status = pipe.execute()
        return list(last), bool(meta), bool(lease), status

    def _read(self, request_id: str, action: Read) -> object:
        with translate_redis_errors(self.label):
            return self._client.xread(
                {keys.deltas_key(request_id): action.after}, count=action.count, block=action.block_ms
            )
