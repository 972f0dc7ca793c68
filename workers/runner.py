"""The engine thread: feeds the engine, publishes its output under leases, takes over orphans.

Theory of operation.  A worker process holds one `Engine` and one thread that owns it.
Celery's thread pool runs many tasks at once; each task *begins* its request in its own
thread (claims the lease and reads the stream: `begin`), hands the decision to the engine
thread and waits on its ticket.  The engine thread loops:

1. take new requests (run, resume, or refuse with final records);
2. run one engine step, then one Redis round trip that publishes the step's records of
   every held request, renews every lease, checks every cancel key and tells the request
   index what moved (`StreamSink.publish`);
3. settle what ended: finished (the last record is in Redis), lost (another worker holds
   the lease now: drop it, write nothing), cancelled (abort and publish the final records);
4. about once a second, look for expired leases of unfinished requests and take them over
   while it has free capacity (`_scan`), so a dead worker's requests go on within seconds;
   drop the index entries of requests whose end a scan has seen;
5. on warm shutdown, stop taking over; when the grace period is over, give every lease up
   (`_hand_off`) so that live workers take the requests over at once.

A ticket is settled when its request needs this worker no more; only then does the task
return and Celery acknowledge the message.  If the engine thread dies, every ticket is
settled as failed, the leases are given up, and the process is asked to stop.

All torch work happens on this one thread.  Why: torch's OpenMP thread team belongs to
the thread that first runs a parallel op; once the main thread owns one, parallel ops on any
other thread run about twice as slowly (measured on a 2-core machine).
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from schemas.config import GenerationConfig
from schemas.errors import ValidationError
from schemas.job import Job
from schemas.records import ErrorInfo
from workers.engine.engine import Emission, Engine, Resume
from workers.engine.scheduler import EngineFull
from workers.lifecycle import Claim, Start, StartKind, decide_start
from workers.publisher import StreamSink

log = logging.getLogger(__name__)
SWEEP_BATCH = 256  # lease-index entries looked at per scan (one pipelined check for all)


class RunnerObserver(Protocol):
    """What the engine thread reports as it goes (workers/metrics.py implements it)."""

    def on_step(self, seconds: float, rows: int, tokens: int) -> None: ...
    def on_settled(self, outcome: str, count: int) -> None: ...
    def on_takeover(self) -> None: ...


class _Unobserved:
    def on_step(self, seconds: float, rows: int, tokens: int) -> None:
        pass

    def on_settled(self, outcome: str, count: int) -> None:
        pass

    def on_takeover(self) -> None:
        pass


@dataclass
class Ticket:
    request_id: str
    done: threading.Event = field(default_factory=threading.Event)
    # finished | already_owned | superseded | handed_over | failed
    outcome: str = "pending"

    def settle(self, outcome: str) -> None:
        if not self.done.is_set():
            self.outcome = outcome
            self.done.set()

    def wait(self, timeout: float | None = None) -> str:
        self.done.wait(timeout)
        return self.outcome


@dataclass
class _Intake:
    ticket: Ticket
    start: Start
    config: GenerationConfig
    owner: str
    last_id: str
    ttl_s: int
    job: Job | None = None


class EngineRunner:
    def __init__(
        self,
        build_engine: Callable[[], Engine],
        sink: StreamSink,
        idle_wait_s: float = 0.5,
        *,
        serves: Callable[[str | None], bool] = lambda _m: True,
        max_attempts: int = 3,
        scan_interval_s: float = 1.0,
        observer: RunnerObserver | None = None,
    ) -> None:
        self._build_engine = build_engine
        self._engine: Engine | None = None
        self._built = threading.Event()
        self._build_error: BaseException | None = None
        self.sink = sink
        self.serves = serves
        self.max_attempts = max_attempts
        self.idle_wait_s = idle_wait_s
        self.scan_interval_s = scan_interval_s
        self.observer: RunnerObserver = observer or _Unobserved()
        self._intake: queue.SimpleQueue[_Intake] = queue.SimpleQueue()
        self._tickets: dict[str, Ticket] = {}
        self._stop = threading.Event()
        self._hand_off_now = threading.Event()
        self.draining = False
        self.dead = False
        self._next_scan = 0.0
        self._tokens: collections.deque[tuple[float, int]] = collections.deque()
        self._thread = threading.Thread(target=self._run, name="tokenrelay-engine", daemon=True)

    # -- called from other threads -----------------------------------------------------------

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

    def begin(self, request_id: str, job: Job | None, invalid: ValidationError | None = None) -> Ticket:
        """Claim a request handed over by a Celery task and queue what to do with it; the
        ticket settles at once when there is nothing to do (already ended or owned)."""
        ticket = Ticket(request_id)
        if self.dead:
            ticket.settle("failed")
            return ticket
        item = self._prepare(ticket, request_id, job, invalid)
        if item is not None:
            self._intake.put(item)
        return ticket

    def wait(self, ticket: Ticket) -> str:
        """Wait for a ticket; never forever on a dead engine thread."""
        while not ticket.done.wait(1.0):
            if self.dead:
                return "failed"
        return ticket.outcome

    def drain(self, grace_s: float) -> None:
        """Warm shutdown: take nothing over any more; after ``grace_s`` hand the rest off."""
        if self.draining:
            return
        self.draining = True
        log.info("warm shutdown: finishing held requests for up to %.1f s, then handing them off", grace_s)
        timer = threading.Timer(grace_s, self._hand_off_now.set)
        timer.daemon = True
        timer.start()

    def load(self) -> tuple[int, int]:
        """(running, waiting) requests, for heartbeats."""
        engine = self._engine
        if engine is None:
            return 0, 0
        return len(engine.running), len(engine.waiting)

    def tokens_per_s(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        recent = [n for t, n in list(self._tokens) if t >= now - window_s]
        return sum(recent) / window_s

    # -- deciding how a request starts (task threads, and the engine thread for takeovers) ---

    def _prepare(
        self, ticket: Ticket, request_id: str, job: Job | None, invalid: ValidationError | None
    ) -> _Intake | None:
        ttl_s = job.ttl_s if job is not None else self.sink.ttl_s
        claim, state = self.sink.claim_and_read(request_id, ttl_s, job.to_dict() if job is not None else None)
        if claim.kind is not Claim.CLAIMED:
            if claim.kind is Claim.ENDED:
                self.sink.unindex([request_id])  # the claim's round trip indexed it
            ticket.settle("finished" if claim.kind is Claim.ENDED else "already_owned")
            if claim.kind is Claim.OWNED:
                log.info("request %s is already held by %s; settling this copy of its task", request_id, claim.owner)
            return None
        config = job.config if job is not None else GenerationConfig()
        if invalid is not None:
            start = Start(StartKind.REFUSE, error=ErrorInfo("invalid_request", str(invalid)))
        else:
            assert job is not None
            start = decide_start(
                claim,
                state.records,
                last_entry_id=state.last_id,
                cancelled=state.cancelled,
                serves_model=self.serves(job.model),
                model=job.model,
                max_attempts=self.max_attempts,
            )
        if start.kind is StartKind.UNREADABLE:
            log.error("request %s: %s", request_id, start.error.message if start.error else "")
        if claim.attempt > 1:
            log.info("request %s: attempt %d (%s)", request_id, claim.attempt, start.kind.value)
        return _Intake(ticket, start, config, claim.owner, state.last_id, ttl_s, job)

    # -- the engine thread -------------------------------------------------------------------

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
                if not self.engine.has_work():
                    self.sink.flush_index()  # the ends of the last step's requests
                self._take_intake(block=not self.engine.has_work())
                if self.engine.has_work():
                    self._cycle()
                if self._hand_off_now.is_set():
                    self._hand_off()
                elif not self.draining:
                    self._scan()
        except BaseException:
            log.exception("engine thread died; failing its requests and handing their leases off")
            self._die()
            raise

    def _cycle(self) -> None:
        t0 = time.perf_counter()
        emissions = self.engine.step()
        took = time.perf_counter() - t0
        outcome = self.sink.publish(emissions, watch=self.engine.active_ids())
        self.observer.on_step(took, len(self.engine.rows), self._count_tokens(emissions))
        self._finish(outcome.finished, "finished")
        for rid, why in outcome.broken.items():
            log.error("request %s: Redis refused its stream for good (%s); dropping it", rid, why)
        gone = outcome.lost | outcome.conflicts | set(outcome.broken)
        if gone:
            self.engine.drop(gone)
            for rid in outcome.lost:
                log.warning("request %s: lease lost to another worker; dropped without writing", rid)
            for rid in outcome.conflicts:
                log.error("request %s: its stream moved under this worker's lease (a foreign entry); dropped", rid)
            self._finish(outcome.lost | outcome.conflicts, "superseded")
            self._finish(set(outcome.broken), "failed")
        if outcome.cancelled:
            aborted = self.engine.abort(outcome.cancelled, "cancelled")
            after = self.sink.publish(aborted)
            self._finish(after.finished, "finished")

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
        rid, start = item.ticket.request_id, item.start
        if rid in self._tickets:  # cannot happen with leases; never leak the first ticket if it does
            log.error("request %s is already in this worker's engine; settling the second copy", rid)
            item.ticket.settle("already_owned")
            return
        self._tickets[rid] = item.ticket
        tokens = sum(len(v) for v in start.resume.tokens.values()) if start.resume else 0
        self.sink.hold(rid, item.owner, item.last_id, item.ttl_s, tokens, item.job)
        submitted_at = item.job.submitted_at if item.job is not None else None
        if start.kind is StartKind.RUN:
            assert item.job is not None
            self._add(item.job, start.resume)
            return
        resume = start.resume
        if start.kind is StartKind.UNREADABLE:
            resume = Resume(next_seq=start.next_seq, tokens={}, texts={}, finished={})
        self.engine.reject(rid, item.config, start.reason, start.error, submitted_at, resume=resume)

    def _add(self, job: Job, resume: Resume | None) -> None:
        try:
            self.engine.add(
                job.request_id,
                prompt=job.prompt,
                messages=job.messages,
                config=job.config,
                submitted_at=job.submitted_at,
                resume=resume,
            )
        except EngineFull as exc:
            error = ErrorInfo("engine_full", str(exc))
            self.engine.reject(job.request_id, job.config, "error", error, job.submitted_at, resume=resume)

    def _scan(self) -> None:
        """Drop ended requests from the lease index, and take over requests whose lease
        expired while this worker has room for them."""
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + self.scan_interval_s
        # Swept even without room: finished requests wait there until a scan sees their end
        # (see workers/lease.py), and the index must not grow while every worker is busy.
        orphans = self.sink.sweep(limit=SWEEP_BATCH, held=self._tickets)
        room = self.engine.limits.max_running - len(self.engine.running) - len(self.engine.waiting)
        for rid in orphans[: max(0, room * 2)]:
            self._take_over(rid)

    def _take_over(self, rid: str) -> None:
        raw = self.sink.job_of(rid)
        if raw is None:
            self.sink.unindex([rid])  # its keys expired: nothing left to resume
            return
        try:
            job: Job | None = Job.from_dict(raw)
            invalid = None
        except ValidationError as exc:
            job, invalid = None, exc
        if job is not None and not self.serves(job.model):
            return  # leave it to a worker that serves its model
        ticket = Ticket(rid)
        item = self._prepare(ticket, rid, job, invalid)
        if item is None:
            return  # ended (and unindexed by _prepare) or held by a live worker
        log.info("taking over request %s (%s)", rid, item.owner)
        self.observer.on_takeover()
        self._accept(item)

    def _hand_off(self) -> None:
        """Grace is over: give up every lease so that live workers take over at once."""
        self._take_intake(block=False)
        ids = list(self._tickets)
        if ids:
            log.info("grace period over: handing %d request(s) off to other workers", len(ids))
            self.engine.drop(ids)
            self.sink.release(ids)
        self._finish(set(ids), "handed_over")
        self._hand_off_now.clear()

    def _die(self) -> None:
        self.dead = True
        for t in self._tickets.values():
            t.settle("failed")
        try:
            self.sink.release(list(self.sink.book.held))
        except Exception:  # the engine is already gone; the leases expire by themselves
            log.exception("could not give the leases up")
        os.kill(os.getpid(), signal.SIGTERM)  # let Celery shut down warmly; nothing runs here any more

    def _finish(self, rids: set[str], outcome: str) -> None:
        settled = 0
        for rid in rids:
            ticket = self._tickets.pop(rid, None)
            if ticket is not None:
                ticket.settle(outcome)
                settled += 1
        if settled:
            self.observer.on_settled(outcome, settled)

    def _count_tokens(self, emissions: Sequence[Emission]) -> int:
        n = sum(len(r.token_ids) for _rid, r in emissions)
        now = time.monotonic()
        if n:
            self._tokens.append((now, n))
        while self._tokens and self._tokens[0][0] < now - 10:
            self._tokens.popleft()
        return n
