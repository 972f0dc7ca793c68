"""The worker's heartbeat: a small thread that writes `schemas.workers.WorkerInfo` every
`HEARTBEAT_INTERVAL_S` (model, capacity, load, tokens/s, draining).  It runs no torch and
never renews leases: a worker whose engine thread is stuck keeps beating but loses its
requests, which is what their readers need."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

from schemas.workers import HEARTBEAT_INTERVAL_S, WorkerInfo
from workers.publisher import StreamSink
from workers.runner import EngineRunner


class Heartbeat:
    def __init__(
        self, sink: StreamSink, runner: EngineRunner, base: WorkerInfo, clock: Callable[[], float] = time.time
    ):
        self.sink, self.runner, self.base, self.clock = sink, runner, base, clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenrelay-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def info(self) -> WorkerInfo:
        running, waiting = self.runner.load()
        return replace(
            self.base,
            running=running,
            waiting=waiting,
            tokens_per_s=round(self.runner.tokens_per_s(), 2),
            heartbeat_at=self.clock(),
            draining=self.runner.draining,
        )

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sink.forget_worker(self.base.worker_id)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sink.heartbeat(self.info())
            self._stop.wait(HEARTBEAT_INTERVAL_S)
