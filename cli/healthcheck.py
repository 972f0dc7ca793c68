"""Container health of a worker: ``python -m cli.healthcheck READY_FILE`` (Dockerfile, compose).

Healthy (exit 0) when the worker in this container consumes tasks and beats:
- ``READY_FILE`` exists (``tokenrelay worker --ready-file`` writes its pid there once Celery
  consumes), and
- a fresh heartbeat in Redis (``schemas.workers``) comes from this host and that pid, from a
  worker that started before the file was written.  The last condition rules out a file left
  over from before a container restart (same host name, pid 1 again): the new worker beats
  while it still loads its model, long before it is ready.

Anything else is exit 1 with one line saying why (Docker reads 0 and 1 only; 2 is reserved).
It imports neither torch nor Celery: it runs every few seconds.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any

from schemas import keys, settings
from schemas.errors import TokenRelayError
from schemas.workers import HEARTBEAT_TTL_S

HEALTHY, UNHEALTHY = 0, 1


def ready_pid(path: str) -> tuple[int, float]:
    """The pid in the ready file and when it was written; ValueError if not ready."""
    try:
        with open(path) as f:
            return int(f.read().strip()), os.stat(path).st_mtime
    except (OSError, ValueError):
        raise ValueError(f"not ready: {path} is missing or holds no pid") from None


def fresh_beats(url: str, now: float) -> list[tuple[str, str, str]]:
    """(hostname, pid, started_at) of every worker that beat within the heartbeat TTL."""
    from schemas.redis_util import connect

    client = connect(url)
    try:
        ids: Any = client.zrangebyscore(keys.WORKERS_KEY, int((now - HEARTBEAT_TTL_S) * 1000), "+inf")
        pipe = client.pipeline(transaction=False)
        for worker_id in ids:
            pipe.hmget(keys.worker_key(worker_id.decode()), ["hostname", "pid", "started_at"])
        return [(_text(host), _text(pid), _text(started)) for host, pid, started in pipe.execute()]
    finally:
        client.close()


def _text(value: Any) -> str:
    return value.decode() if value is not None else ""


def check(ready_file: str, now: float | None = None) -> str:
    """Why the worker is unhealthy, or '' when it is healthy."""
    now = time.time() if now is None else now
    try:
        pid, written_at = ready_pid(ready_file)
    except ValueError as exc:
        return str(exc)
    host = socket.gethostname()
    for hostname, beat_pid, started_at in fresh_beats(settings.redis_url(), now):
        if hostname == host and beat_pid == str(pid) and started_at and json.loads(started_at) <= written_at:
            return ""
    return f"no fresh heartbeat from pid {pid} on {host} (worker stuck, or Redis lost its keys)"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m cli.healthcheck READY_FILE", file=sys.stderr)
        return UNHEALTHY
    try:
        problem = check(args[0])
    except (TokenRelayError, OSError) as exc:  # a bad setting, or Redis unreachable
        problem = str(exc)
    except Exception as exc:  # redis-py's errors: the worker cannot work without Redis either
        problem = f"{type(exc).__name__}: {exc}"
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return UNHEALTHY
    return HEALTHY


if __name__ == "__main__":
    sys.exit(main())
