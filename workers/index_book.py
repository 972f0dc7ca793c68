"""What the request index (schemas/index.py) hears from a worker, planned without I/O.

Theory of operation.  The index is global (a few sorted sets and a capped event stream on
their own slots), so the per-request Lua scripts cannot write it: a script touches only its
request's slot.  Instead the sink appends plain index commands to the round trips it sends
anyway, and this book decides which:

- ``running`` once per hold, in the first step that plans the request (the claim already
  succeeded, so the announcement is true whatever the step's replies say);
- ``progress`` (tokens so far, TTFT, tokens/s) at most every ``progress_every_s`` per request;
- the end (finished / cancelled / failed) only after the publish script answered OK for the
  request's last record: a worker that lost its lease must not announce an end that is not
  its own.  Those commands wait in ``pending`` for the next round trip (the next step when
  busy, `StreamSink.flush_index` when the engine goes idle), so a step costs no extra trip.

Everything here is idempotent or folded by readers (`schemas.index.fold`): a resend after a
connection error repeats an event at worst.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from schemas import index
from schemas.index import Command
from workers.lifecycle import PublishCall, StepOutcome


@dataclass
class Tracked:
    model: str | None
    batch_id: str | None
    attempt: int
    submitted_at: float | None
    tokens_at_hold: int  # tokens already in the stream when this worker took it (a resume)
    announced: bool = False
    first_token_at: float | None = None
    tokens_at_first: int = 0  # the rate counts what came after the first step with tokens
    progress_at: float = 0.0


class IndexBook:
    def __init__(self, worker_id: str, progress_every_s: float = 1.0) -> None:
        self.worker_id = worker_id
        self.progress_every_s = progress_every_s
        self.tracked: dict[str, Tracked] = {}
        self.pending: list[Command] = []

    def track(
        self,
        request_id: str,
        *,
        model: str | None,
        batch_id: str | None,
        attempt: int,
        submitted_at: float | None,
        tokens: int = 0,
    ) -> None:
        self.tracked[request_id] = Tracked(model, batch_id, attempt, submitted_at, tokens)

    def forget(self, request_ids: Iterable[str]) -> None:
        for rid in request_ids:
            self.tracked.pop(rid, None)

    def on_step(self, calls: Sequence[PublishCall], now: float) -> list[Command]:
        """The commands that go in-band with this step's publish scripts: running, progress."""
        commands: list[Command] = []
        for call in calls:
            t = self.tracked.get(call.request_id)
            if t is None:
                continue
            if not t.announced:
                t.announced = True
                t.progress_at = now
                commands += index.on_running(call.request_id, self.worker_id, t.model, t.batch_id, t.attempt, now=now)
            if t.first_token_at is None and call.tokens > t.tokens_at_hold:
                t.first_token_at, t.tokens_at_first = now, call.tokens
            if not call.final and t.first_token_at is not None and now - t.progress_at >= self.progress_every_s:
                t.progress_at = now
                commands += index.on_progress(
                    call.request_id, call.tokens, ttft_s=self._ttft(t), tokens_per_s=self._rate(t, call.tokens, now),
                    batch_id=t.batch_id, now=now,
                )  # fmt: skip
        return commands

    def on_outcome(self, calls: Sequence[PublishCall], outcome: StepOutcome, now: float) -> None:
        """After the replies: queue the end of every request whose last record is in Redis."""
        for call in calls:
            rid = call.request_id
            t = self.tracked.pop(rid, None) if rid in outcome.finished or rid in outcome.broken else None
            if rid in outcome.lost or rid in outcome.conflicts:
                self.tracked.pop(rid, None)  # the new owner speaks for it now
            if t is None:
                continue
            if rid in outcome.broken:
                self.pending += index.on_finished(rid, "failed", None, t.batch_id, "error", call.tokens, now=now)
                continue
            last = call.last
            usage = last.usage.to_wire() if last is not None and last.usage is not None else None
            reason = last.finish_reason if last is not None else None
            self.pending += index.on_finished(rid, call.status, usage, t.batch_id, reason, call.tokens, now=now)

    def take_pending(self) -> list[Command]:
        out, self.pending = self.pending, []
        return out

    def _ttft(self, t: Tracked) -> float | None:
        if t.first_token_at is None or t.submitted_at is None or t.tokens_at_hold:
            return None  # a resumed request's first token came from another worker
        return max(0.0, t.first_token_at - t.submitted_at)

    @staticmethod
    def _rate(t: Tracked, tokens: int, now: float) -> float | None:
        if t.first_token_at is None or now <= t.first_token_at:
            return None
        return round((tokens - t.tokens_at_first) / (now - t.first_token_at), 2)
