"""Per-request and per-choice state of the engine.

A `Request` has ``n`` `Choice` objects; each running choice is one row of the decode batch.
A choice's generated tokens go through its detokenizer; text and token ids wait in the
choice's out-buffer until the engine emits a record (every ``stream_interval`` steps, at
once for the first text, and always when the choice finishes).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo, Record, TokenLogprob, Usage
from workers.engine.detokenizer import IncrementalDetokenizer


@dataclass
class Choice:
    index: int
    detok: IncrementalDetokenizer
    generated: list[int] = field(default_factory=list)
    # Tokens pushed to the detokenizer whose text is not out yet, with their logprobs.
    unreleased: deque[tuple[int, TokenLogprob | None]] = field(default_factory=deque)
    out_text: list[str] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    out_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    emitted: bool = False
    # After a resume: output an earlier worker already published, replayed but not re-sent.
    skip_chars: int = 0
    skip_ids: int = 0

    @property
    def last_token(self) -> int:
        return self.generated[-1]

    def accept(self, token: int, logprob: TokenLogprob | None, *, is_stop_token: bool) -> None:
        self.generated.append(token)
        if is_stop_token:
            # A stop token (EOS, stop_token_ids) ends the choice: its id is reported, its text never.
            self._release(final=True)
            self._move(token, logprob)
            return
        self.unreleased.append((token, logprob))
        self.detok.push(token)

    def replay(self, published_ids: list[int], published_chars: int) -> None:
        """Rebuild the detokenizer state of a resumed choice: push what was published, and
        drop that much text and that many ids from what the detokenizer releases next."""
        for token in published_ids:
            self.generated.append(token)
            self.unreleased.append((token, None))
            self.detok.push(token)
        self.skip_ids, self.skip_chars = len(published_ids), published_chars
        self.emitted = bool(published_ids or published_chars)

    def collect(self, final: bool) -> None:
        """Move what the detokenizer releases into the out-buffer."""
        self._release(final)

    def _release(self, final: bool) -> None:
        text, count = self.detok.release(final=final)
        if self.skip_chars and text:
            cut = min(self.skip_chars, len(text))
            text, self.skip_chars = text[cut:], self.skip_chars - cut
        if text:
            self.out_text.append(text)
        for _ in range(count):
            self._move(*self.unreleased.popleft())
        if final:
            while self.unreleased:  # defensive: the detokenizer counts every pushed token at final
                self._move(*self.unreleased.popleft())

    def _move(self, token: int, logprob: TokenLogprob | None) -> None:
        if self.skip_ids:
            self.skip_ids -= 1
            return
        self.out_ids.append(token)
        if logprob is not None:
            self.out_logprobs.append(logprob)

    def has_output(self) -> bool:
        return bool(self.out_text or self.out_ids)

    def take(self) -> tuple[str, list[int], list[TokenLogprob]]:
        text, ids, lps = "".join(self.out_text), self.out_ids, self.out_logprobs
        self.out_text, self.out_ids, self.out_logprobs = [], [], []
        return text, ids, lps


@dataclass
class Timings:
    submitted_at: float
    admitted_at: float | None = None
    prefill_s: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    decode_steps: int = 0


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    config: GenerationConfig
    seed: int
    choices: list[Choice]
    timings: Timings
    next_seq: int = 0
    error: ErrorInfo | None = None
    # Tokens of each choice published by an earlier worker (a redelivered task resumes).
    resumed_tokens: int = 0

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def unfinished(self) -> list[Choice]:
        return [c for c in self.choices if c.finish_reason is None]

    def make_record(self, choice: Choice, usage: Usage | None) -> Record:
        text, ids, lps = choice.take()
        record = Record(
            seq=self.next_seq,
            index=choice.index,
            text=text,
            token_ids=ids,
            logprobs=lps if self.config.logprobs else None,
            finish_reason=choice.finish_reason,
            usage=usage,
            error=self.error if choice.finish_reason == "error" else None,
        )
        self.next_seq += 1
        choice.emitted = True
        return record

    def usage(self, now: float | None = None) -> Usage:
        now = time.time() if now is None else now
        t = self.timings
        completion = sum(len(c.generated) for c in self.choices)
        decoded = completion - self.resumed_tokens - sum(1 for c in self.choices if c.generated)
        span = (t.last_token_at - t.first_token_at) if t.first_token_at and t.last_token_at else 0.0
        return Usage(
            prompt_tokens=len(self.prompt_ids),
            completion_tokens=completion,
            total_tokens=len(self.prompt_ids) + completion,
            queue_s=max(0.0, (t.admitted_at or now) - t.submitted_at),
            ttft_s=None if t.first_token_at is None else max(0.0, t.first_token_at - t.submitted_at),
            prefill_tokens_per_s=(len(self.prompt_ids) / t.prefill_s) if t.prefill_s else None,
            decode_tokens_per_s=(decoded / span) if span > 0 and decoded > 0 else None,
            inter_token_latency_s=(span / t.decode_steps) if t.decode_steps else None,
            e2e_s=max(0.0, now - t.submitted_at),
        )
