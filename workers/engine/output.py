"""The output processor: from sampled token ids to the wire records, without torch.

Theory of operation.  An engine core (the builtin one in workers/engine/core.py, or any other
engine that yields token ids) runs the model and samples; it hands each pass over as a
`CoreStep`: per row the request id, the choice index, the token id and the raw logprob
info (`Sampled`), plus which requests were admitted (prefill timings), which took a decode
step, and which failed in the core.  The `OutputProcessor` owns everything after that, per
request and per choice:

- detokenizing (`IncrementalDetokenizer`: whole UTF-8 characters only, stop strings across
  tokens with the exact cut), and the token ids and logprobs that wait for their text;
- the finish reasons: a choice's own tokens end it in `_on_token` (stop token, stop string,
  ``max_tokens`` or the context length), everything else (cancel, error, rejection) in `_end`
  (through `end` and `reject`), and a resume brings in what an earlier worker published;
- logprob text and bytes (token_bytes.py), seq numbering, usage and timings (usage only on the
  very last record of a request), the ``stream_interval`` batching of records;
- resume: a redelivered request replays what the stream holds and skips re-sending it.

`process` appends the records to publish, as ``(request_id, Record)`` pairs in order, to the
caller's list and returns the ``(request_id, choice index)`` pairs that finished, so the core
frees their rows.  A request is forgotten as soon as its last record is out.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo, Record, TokenLogprob, TopLogprob, Usage
from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.token_bytes import token_text

Emission = tuple[str, Record]
Finished = tuple[str, int]  # (request id, choice index)

__all__ = ["CoreStep", "Emission", "Finished", "OutputProcessor", "Resume", "Sampled"]


@dataclass(frozen=True)
class Resume:
    """What an earlier worker already published for a redelivered request."""

    next_seq: int
    tokens: dict[int, list[int]]  # choice index -> published token ids
    texts: dict[int, str]  # choice index -> published text
    finished: dict[int, str]  # choice index -> finish reason already published


@dataclass(frozen=True, slots=True)
class Sampled:
    """One row's draw: the token and, when logprobs were asked for, its raw logprob and the top
    alternatives as ``(token id, logprob)``."""

    token_id: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclass(slots=True)
class CoreStep:
    """What one pass of an engine core produced: the input of `OutputProcessor.process`."""

    tokens: list[tuple[str, int, Sampled]]  # (request id, choice index, draw), one per row
    sampled_at: float  # when the pass's tokens came out
    admitted: list[str] = field(default_factory=list)  # requests whose prefill this pass was
    prefill_started: float = 0.0
    prefill_s: float = 0.0
    decoded: list[str] = field(default_factory=list)  # requests that took a decode step
    failed: list[tuple[str, ErrorInfo]] = field(default_factory=list)  # ended by the core


@dataclass
class Timings:
    submitted_at: float
    admitted_at: float | None = None
    prefill_s: float | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    decode_steps: int = 0


@dataclass
class OutputChoice:
    """One choice's output books: tokens pushed to the detokenizer wait in ``unreleased`` (with
    their logprobs) until it releases their text; released output waits in the ``out_*``
    buffers until a record takes it."""

    index: int
    detok: IncrementalDetokenizer
    generated: int = 0  # tokens generated (replayed ones included)
    unreleased: deque[tuple[int, TokenLogprob | None]] = field(default_factory=deque)
    out_text: list[str] = field(default_factory=list)
    out_ids: list[int] = field(default_factory=list)
    out_logprobs: list[TokenLogprob] = field(default_factory=list)
    finish_reason: str | None = None
    emitted: bool = False
    # After a resume: output an earlier worker already published, replayed but not re-sent.
    skip_chars: int = 0
    skip_ids: int = 0

    def accept(self, token: int, logprob: TokenLogprob | None, *, is_stop_token: bool) -> None:
        self.generated += 1
        if is_stop_token:
            # A stop token (EOS, stop_token_ids) ends the choice: its id is reported, its text never.
            self.release(final=True)
            self._move(token, logprob)
            return
        self.unreleased.append((token, logprob))
        self.detok.push(token)

    def replay(self, published_ids: list[int], published_chars: int) -> None:
        """Rebuild the detokenizer state of a resumed choice: push what was published, and
        drop that much text and that many ids from what the detokenizer releases next."""
        for token in published_ids:
            self.generated += 1
            self.unreleased.append((token, None))
            self.detok.push(token)
        self.skip_ids, self.skip_chars = len(published_ids), published_chars
        self.emitted = bool(published_ids or published_chars)

    def release(self, final: bool) -> None:
        """Move what the detokenizer releases into the out-buffer."""
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
class OutputRequest:
    request_id: str
    prompt_tokens: int
    config: GenerationConfig
    choices: list[OutputChoice]
    timings: Timings
    next_seq: int = 0
    error: ErrorInfo | None = None
    resumed_tokens: int = 0  # tokens an earlier worker published (a redelivered task resumes)

    @property
    def finished(self) -> bool:
        return all(c.finish_reason is not None for c in self.choices)

    def make_record(self, choice: OutputChoice, usage: Usage | None) -> Record:
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
        completion = sum(c.generated for c in self.choices)
        decoded = completion - self.resumed_tokens - sum(1 for c in self.choices if c.generated)
        span = (t.last_token_at - t.first_token_at) if t.first_token_at and t.last_token_at else 0.0
        return Usage(
            prompt_tokens=self.prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.prompt_tokens + completion,
            queue_s=max(0.0, (t.admitted_at or now) - t.submitted_at),
            ttft_s=None if t.first_token_at is None else max(0.0, t.first_token_at - t.submitted_at),
            prefill_tokens_per_s=(self.prompt_tokens / t.prefill_s) if t.prefill_s else None,
            decode_tokens_per_s=(decoded / span) if span > 0 and decoded > 0 else None,
            inter_token_latency_s=(span / t.decode_steps) if t.decode_steps else None,
            e2e_s=max(0.0, now - t.submitted_at),
        )


class OutputProcessor:
    """Per-request output state of one model: see the module docstring."""

    def __init__(
        self,
        tokenizer: Any,
        token_bytes: Sequence[bytes],
        eos_token_ids: Iterable[int],
        max_context: int,
        stream_interval: int = 1,
    ) -> None:
        if stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {stream_interval}")
        self.tokenizer = tokenizer
        self.token_bytes = token_bytes
        self.eos_token_ids = frozenset(eos_token_ids)
        self.max_context = max_context
        self.stream_interval = stream_interval
        self.requests: dict[str, OutputRequest] = {}

    def __contains__(self, request_id: object) -> bool:
        return request_id in self.requests

    # -- requests in and out ----------------------------------------------------------------

    def add(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        submitted_at: float | None = None,
        resume: Resume | None = None,
    ) -> list[Emission]:
        """Start a request's output state.  With ``resume``, replay what an earlier worker
        published; if that already ended every choice, the request is done at once (it is not
        kept) and the record with the usage, all that was missing, is returned."""
        req, out = self._new(request_id, prompt_ids, config, submitted_at, resume)
        if not req.finished:
            self.requests[request_id] = req
        return out

    def reject(
        self,
        request_id: str,
        config: GenerationConfig,
        reason: str,
        error: ErrorInfo | None = None,
        submitted_at: float | None = None,
        resume: Resume | None = None,
    ) -> list[Emission]:
        """The records of a request that never reaches the model: after whatever ``resume``
        says was published, every unfinished choice ends with ``reason``."""
        req, out = self._new(request_id, (), config, submitted_at, resume)
        return out if req.finished else self._end(req, reason, error)

    def _new(
        self,
        request_id: str,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        submitted_at: float | None,
        resume: Resume | None,
    ) -> tuple[OutputRequest, list[Emission]]:
        choices = [OutputChoice(i, self._detokenizer(config, prompt_ids)) for i in range(config.n)]
        req = OutputRequest(request_id, len(prompt_ids), config, choices, Timings(submitted_at or time.time()))
        if resume is None:
            return req, []
        req.next_seq = resume.next_seq
        for c in req.choices:
            c.finish_reason = resume.finished.get(c.index)
            c.replay(resume.tokens.get(c.index, []), len(resume.texts.get(c.index, "")))
        req.resumed_tokens = sum(len(v) for v in resume.tokens.values())
        if not req.finished:
            return req, []
        # Every choice ended but the record with usage was never written.
        return req, [(request_id, req.make_record(req.choices[-1], req.usage()))]

    def end(self, request_id: str, reason: str, error: ErrorInfo | None = None) -> list[Emission]:
        """End every unfinished choice of a request (cancelled, failed, rejected): their final
        records, the last one with the usage.  Unknown or finished requests give nothing."""
        req = self.requests.pop(request_id, None)
        return [] if req is None else self._end(req, reason, error)

    def _end(self, req: OutputRequest, reason: str, error: ErrorInfo | None) -> list[Emission]:
        if error is not None:
            req.error = error
        out: list[Emission] = []
        for choice in req.choices:
            if choice.finish_reason is None:
                choice.finish_reason = reason
                choice.release(final=True)
                usage = req.usage() if req.finished else None
                out.append((req.request_id, req.make_record(choice, usage)))
        return out

    def forget(self, request_id: str) -> None:
        """Drop a request without any record (another worker owns its stream)."""
        self.requests.pop(request_id, None)

    # -- one pass ---------------------------------------------------------------------------

    def process(self, step: CoreStep, step_index: int, out: list[Emission]) -> list[Finished]:
        """Timings, core failures, then every row's token, in row order: records are appended
        to ``out`` as they are made (if a later row raises, the earlier records still go out,
        so seq never skips).  Returns the choices that finished.  ``step_index`` counts the
        engine's steps (for ``stream_interval``)."""
        requests = self.requests
        for rid in step.admitted:
            t = requests[rid].timings
            t.admitted_at, t.prefill_s = step.prefill_started, step.prefill_s
        for rid in step.decoded:
            requests[rid].timings.decode_steps += 1
        for rid, error in step.failed:
            out.extend(self.end(rid, "error", error))
        finished: list[Finished] = []
        now = step.sampled_at
        due = step_index % self.stream_interval == 0
        for rid, index, sampled in step.tokens:
            req = requests[rid]
            choice = req.choices[index]
            record = self._on_token(req, choice, sampled, now, due)
            if record is not None:
                out.append((rid, record))
            if choice.finish_reason is not None:
                finished.append((rid, index))
                if req.finished:
                    del requests[rid]
        return finished

    def _on_token(self, req: OutputRequest, choice: OutputChoice, s: Sampled, now: float, due: bool) -> Record | None:
        """Feed one token; the one place where a choice's own tokens finish it."""
        t = req.timings
        if t.first_token_at is None:
            t.first_token_at = now
        t.last_token_at = now
        cfg = req.config
        token = s.token_id
        is_stop = token in cfg.stop_token_ids or (not cfg.ignore_eos and token in self.eos_token_ids)
        choice.accept(token, self._logprob(s), is_stop_token=is_stop)
        ending = is_stop or choice.detok.stopped or self._at_length(req, choice)
        choice.release(final=ending)
        if ending:
            # The final release can still complete a stop string (whole characters that were
            # waiting behind an incomplete one): that choice stopped, it did not run out.
            choice.finish_reason = "stop" if is_stop or choice.detok.stopped else "length"
            return req.make_record(choice, req.usage() if req.finished else None)
        if (due or not choice.emitted) and choice.has_output():
            return req.make_record(choice, None)
        return None

    def _at_length(self, req: OutputRequest, choice: OutputChoice) -> bool:
        return choice.generated >= req.config.max_tokens or req.prompt_tokens + choice.generated >= self.max_context

    def _logprob(self, s: Sampled) -> TokenLogprob | None:
        if s.logprob is None:
            return None
        tb = self.token_bytes
        top = [TopLogprob(token_text(tb[t]), list(tb[t]), lp) for t, lp in (s.top or [])]
        return TokenLogprob(token_text(tb[s.token_id]), list(tb[s.token_id]), s.logprob, top)

    def _detokenizer(self, config: GenerationConfig, context_ids: Sequence[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(
            self.tokenizer,
            context_ids,
            config.stop,
            config.include_stop_str_in_output,
            config.skip_special_tokens,
        )
