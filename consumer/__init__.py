"""Read a request's stream of records: `StreamReader` (blocking) and `AsyncStreamReader` (asyncio).

Theory of operation
-------------------
A request's records live in the Redis Stream ``keys.deltas_key(request_id)``, one entry per
record, with explicit entry ids ``<seq + 1>-0``.  A reader is a plain XREAD loop (no consumer
groups), so any number of readers may follow one request, from the start or from any entry id
(the resume cursor, ``Record.entry_id``), while it runs or after it ended.

Every decision lives in one sans-IO state machine, :class:`consumer.core.ReaderCore`
(the h11 pattern); the two readers only perform the I/O it asks for:

- ``Probe``: the stream's last entry (XREVRANGE COUNT 1) + EXISTS meta + EXISTS lease +
  the meta's status in one round trip, before the first read and after every empty read.
  Neither stream nor meta → :class:`RequestNotFound` (unknown, or expired meanwhile).  The
  meta key tells a queued request (no records yet) from an unknown one, and the lease key a
  queued one from one a worker has started; a last entry that is the final record at or
  before the cursor means a reader resuming after the end is done at once.
- ``Read``: XREAD BLOCK of at most 1 s (redis-py's socket timeout is 5 s) COUNT 512 after the
  cursor.  Records are decoded (:class:`SchemaError` on garbage or an unknown version) and
  their ``seq`` must run 0, 1, 2, ... without gap or repeat (from a cursor: from the first seen).
- ``Done``: the record with ``usage`` arrived; nothing follows it.  If any record said
  ``finish_reason="error"``, :class:`GenerationFailed` is raised after every record was
  yielded, with the partial :class:`Result` as ``.result``.

``timeout_s`` is the longest wait without a new record from a running request; beyond it
:class:`StreamTimeout` (a reader never ends silently).  ``None`` waits forever.  It does not
run while the request is queued (waiting for a worker); ``queue_timeout_s`` bounds that wait
(default ``None``: as long as the request's keys live).  A dropped connection or a Redis
restart does not end a read: the reader backs off, probes again and goes on from its cursor;
only Redis staying unreachable for ``timeout_s`` raises :class:`schemas.RelayConnectionError`
naming the URL (password masked).  With
``cancel_on_exit=True``, leaving the loop before the stream ended (break, exception, close)
cancels the request (``cancel``: schemas/cancel.py).  With ``AsyncStreamReader`` a
``break`` only closes the generator when the loop collects it; use ``contextlib.aclosing``
(or close the reader) to cancel at once.
"""

from consumer.aio import AsyncStreamReader
from consumer.result import Result
from consumer.sync import StreamReader
from schemas.errors import (
    GenerationFailed,
    RelayConnectionError,
    RequestNotFound,
    SchemaError,
    StreamError,
    StreamTimeout,
    TokenRelayError,
)
from schemas.records import Record

__all__ = [
    "AsyncStreamReader",
    "GenerationFailed",
    "Record",
    "RelayConnectionError",
    "RequestNotFound",
    "Result",
    "SchemaError",
    "StreamError",
    "StreamReader",
    "StreamTimeout",
    "TokenRelayError",
]
