"""The engine thread: feeds the engine from Celery task threads and publishes its output.

Theory of operation.  A worker process holds one `Engine` and one thread that owns it.
Celery's thread pool runs many tasks at once; each task hands its job to `submit()` and
waits on its ticket.  The engine thread loops: take new jobs, run one engine step, then
one Redis round trip that publishes the step's records and checks the cancel key of every
active request.  Cancelled requests are aborted at once and their final records published
before the next step.  A ticket is settled when its request's last record is in Redis (or
another worker turned out to own the stream), and only then does the task return, so the
broker message is acknowledged only after the stream has ended.

The engine thread also loads the model and warms it up: all torch work of the process
happens on that one thread.  Why: torch's OpenMP thread team belongs to the thread that
first runs a parallel op; once the main thread owns one, parallel ops on any other thread
run about twice as slowly (measured on a 2-core machine: elementwise ops 75 -> 165 us, a
SmolLM2 decode step about 20% slower).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from schemas.config import GenerationConfig
from schemas.job import Job
from schemas.records import ErrorInfo
from workers.engine.engine import Emission, Engine, Resume
from workers.engine.scheduler import EngineFull
from workers.publisher import StreamSink

log = logging.getLogger(__name__)


@dataclass
class Ticket:
    request_id: str
    done: threading.Event = field(default_factory=threading.Event)
    outcome: str = "pending"  # finished | superseded | failed

    def settle(self, outcome: str) -> None:
        self.outcome = outcome
        self.done.set()

    def wait(self, timeout: float | None = None) -> str:
        self.done.wait(timeout)
        return self.outcome


@dataclass
class _Intake:
    ticket: Ticket
    job: Job | None = None
    resume: Resume | None = None
    reason: str = "error"
    error: ErrorInfo | None = None
    config: GenerationConfig | None = None


class EngineRunner:
    def __init__(self, build_engine: Callable[[], Engine], sink: StreamSink, idle_wait_s: float = 0.5) -> None:
        self._build_engine = build_engine
        self._engine: Engine | None = None
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self.sink = sink
        self.idle_wait_s = idle_wait_s
        self._intake: queue.SimpleQueue[_Intake] = queue.SimpleQueue()
        self._tickets: dict[str, Ticket] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tokenrelay-engine", daemon=True)

    # -- called from task threads ------------------------------------------------------

    @property
    def engine(self) -> Engine:
        assert self._engine is not None, "the engine is built by start()"
        return self._engine

    def start(self) -> EngineRunner:
        """Start the engine thread and wait until it has built the engine (model loaded)."""
        self._thread.start()
        self._built.wait()
        if self._build_error is not None:
            raise self._build_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def submit(self, job: Job, resume: Resume | None = None) -> Ticket:
        ticket = Ticket(job.request_id)
        self._intake.put(_Intake(ticket, job=job, resume=resume))
        return ticket

    def reject(self, request_id: str, config: GenerationConfig, reason: str, error: ErrorInfo | None = None) -> Ticket:
        """End a request that never reaches the model with final records (through the engine,
        so that they get seq numbers and usage like any other)."""
        ticket = Ticket(request_id)
        self._intake.put(_Intake(ticket, reason=reason, error=error, config=config))
        return ticket

    # -- the engine thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._engine = self._build_engine()
        except BaseException as exc:
            self._build_error = exc
            return
        finally:
            self._built.set()
        try:
            while not self._stop.is_set():
                self._take_intake(block=not self.engine.has_work())
                if self.engine.has_work():
                    self._cycle()
        except BaseException:
            log.exception("engine thread died; failing its requests")
            for t in self._tickets.values():
                t.settle("failed")
            raise

    def _cycle(self) -> None:
        emissions = self.engine.step()
        result = self.sink.publish(emissions, watch=self.engine.active_ids())
        self._settle(emissions)
        if result.conflicts:
            self.engine.drop(result.conflicts)
            for rid in result.conflicts:
                self._finish(rid, "superseded")
        if result.cancelled:
            aborted = self.engine.abort(result.cancelled, "cancelled")
            self.sink.publish(aborted)
            self._settle(aborted)

    def _take_intake(self, block: bool) -> None:
        try:
            item = self._intake.get(timeout=self.idle_wait_s) if block else self._intake.get_nowait()
        except queue.Empty:
            return
        while True:
            self._accept(item)
            try:
                item = self._intake.get_nowait()
            except queue.Empty:
                return

    def _accept(self, item: _Intake) -> None:
        rid = item.ticket.request_id
        self._tickets[rid] = item.ticket
        if item.job is None:
            assert item.config is not None
            self.engine.reject(rid, item.config, item.reason, item.error)
            return
        job = item.job
        try:
            self.engine.add(
                rid,
                prompt=job.prompt,
                messages=job.messages,
                config=job.config,
                submitted_at=job.submitted_at,
                resume=item.resume,
            )
        except EngineFull as exc:
            self.engine.reject(rid, job.config, "error", ErrorInfo("engine_full", str(exc)), job.submitted_at)

    def _settle(self, emissions: Sequence[Emission]) -> None:
        for rid, record in emissions:
            if record.is_last:
                self._finish(rid, "finished")

    def _finish(self, rid: str, outcome: str) -> None:
        ticket = self._tickets.pop(rid, None)
        if ticket is not None:
            ticket.settle(outcome)
