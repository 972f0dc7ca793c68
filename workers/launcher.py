"""Starting a worker as a child process and waiting until it consumes (demo, tests, benchmarks).

Imports nothing heavy: the child loads the model, the parent only watches.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from consumer import AsyncStreamReader, StreamReader
from producer import Producer
from schemas.errors import WorkerStartError

__all__ = ["Stack", "WorkerProcess", "WorkerStartError", "start_stack"]


class WorkerProcess:
    """A ``tokenrelay worker`` child with its log in a file."""

    def __init__(
        self,
        redis_url: str,
        broker_url: str | None = None,
        model: str | None = None,
        extra_args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log_path: str | Path | None = None,
    ) -> None:
        self._dir = tempfile.mkdtemp(prefix="tokenrelay-worker-")
        self.ready_file = os.path.join(self._dir, "ready")
        self.log_path = Path(log_path or os.path.join(self._dir, "worker.log"))
        # URLs travel in the environment, never on the command line: a password there would
        # show in `ps` to every user of the machine.
        args = [sys.executable, "-m", "cli", "worker", "--ready-file", self.ready_file]
        urls = {"TOKENRELAY_REDIS_URL": redis_url, "TOKENRELAY_BROKER_URL": broker_url or redis_url}
        if model:
            args += ["--model", model]
        args += list(extra_args)
        child_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **urls, **(env or {})}
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - lives as long as the child
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=child_env)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = 180.0) -> WorkerProcess:
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.ready_file):
            if self.proc.poll() is not None:
                raise WorkerStartError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise WorkerStartError(f"worker not ready after {timeout_s:.0f}s:\n{self.log_tail()}")
            time.sleep(0.1)
        return self

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-request, as in a crash."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Warm shutdown (SIGTERM): Celery finishes its running tasks first."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def __enter__(self) -> WorkerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Stack:
    """A ready worker on one server, with a producer and a reader for it (tests, benchmarks)."""

    url: str
    worker: WorkerProcess
    producer: Producer
    reader: StreamReader

    def async_reader(self) -> AsyncStreamReader:
        return AsyncStreamReader(self.url)

    def stop(self) -> None:
        self.producer.close()
        self.reader.close()
        self.worker.stop()


def start_stack(
    url: str,
    model: str | None = None,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    ttl_s: int | None = None,
    broker_url: str | None = None,
    ready_timeout_s: float = 180.0,
) -> Stack:
    """A worker, producer and reader on ``url``; the broker is ``url`` too unless given (it
    must be given when ``url`` is a Redis Cluster, which cannot be a broker)."""
    worker = WorkerProcess(redis_url=url, broker_url=broker_url, model=model, extra_args=extra_args, env=env)
    try:
        worker.wait_ready(ready_timeout_s)
    except BaseException:  # e.g. Ctrl-C while it loads: no worker left behind
        worker.kill()
        raise
    return Stack(url, worker, Producer(url, broker_url, ttl_s=ttl_s), StreamReader(url))
