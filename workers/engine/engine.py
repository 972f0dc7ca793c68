"""The decode engine: continuous batching over one model, plain Python plus torch.

Theory of operation.  Requests wait in arrival order.  Each `step()` does one forward pass:
if waiting requests fit the limits, it admits them and runs their prefill (left-padded, one
pass for all of them; ``n`` choices share one prefill and then fork into ``n`` rows);
otherwise it runs one decode pass for every running row.  After the pass each row samples
from its own random stream, feeds its detokenizer, and checks its stop conditions;
finished rows leave the batch at once, freeing their slot and KV cache.  The step returns
the records to publish as ``(request_id, Record)`` pairs, the last record of a request
carrying its usage.  Cancellation and failures come in through `abort()`, which ends the
request's unfinished choices and returns their final records at once.

The engine knows nothing of Celery or Redis: the runner feeds it and publishes its output.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo, Record, TokenLogprob, TopLogprob
from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.kv_cache import BatchCache
from workers.engine.model_runner import LoadedModel, ModelRunner
from workers.engine.prompt import PromptError, encode_prompt
from workers.engine.sampler import RowSampling, Sampled, sample
from workers.engine.scheduler import EngineFull, Limits, admit
from workers.engine.sequence import Choice, Request, Timings
from workers.engine.token_bytes import token_text

Emission = tuple[str, Record]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resume:
    """What an earlier worker already published for a redelivered request."""

    next_seq: int
    tokens: dict[int, list[int]]  # choice index -> published token ids
    texts: dict[int, str]  # choice index -> published text
    finished: dict[int, str]  # choice index -> finish reason already published


class Engine:
    def __init__(self, loaded: LoadedModel, limits: Limits | None = None, stream_interval: int = 1) -> None:
        if stream_interval < 1:
            raise ValueError(f"stream_interval must be >= 1, got {stream_interval}")
        self.loaded = loaded
        self.runner = ModelRunner(loaded)
        self.limits = limits or Limits()
        self.stream_interval = stream_interval
        self.waiting: deque[Request] = deque()
        self.running: dict[str, Request] = {}
        self.rows: list[tuple[Request, Choice]] = []  # row i of the batch cache
        self.cache: BatchCache | None = None
        self._outbox: list[Emission] = []
        self._steps = 0

    # -- intake ---------------------------------------------------------------------------

    def add(
        self,
        request_id: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, str]] | None = None,
        config: GenerationConfig,
        submitted_at: float | None = None,
        resume: Resume | None = None,
    ) -> None:
        """Queue a request.  A request that cannot be served ends with error records (in the
        next step's output); only a full queue raises (`EngineFull`)."""
        if len(self.waiting) >= self.limits.max_queued:
            raise EngineFull(f"{len(self.waiting)} requests already waiting (max_queued={self.limits.max_queued})")
        try:
            prompt_ids = encode_prompt(self.loaded, prompt, messages)
            self._check_context(prompt_ids)
        except PromptError as exc:
            req = self._new_request(request_id, config, submitted_at, [])
            self._outbox.extend(self._end(req, req.unfinished(), "error", ErrorInfo(exc.kind, str(exc))))
            return
        req = self._new_request(request_id, config, submitted_at, prompt_ids)
        if resume is not None:
            self._apply_resume(req, resume)
            if req.finished:
                return
        self.waiting.append(req)

    def reject(
        self,
        request_id: str,
        config: GenerationConfig,
        reason: str = "error",
        error: ErrorInfo | None = None,
        submitted_at: float | None = None,
        resume: Resume | None = None,
    ) -> None:
        """End a request that never reaches the model (bad job, unknown model, cancelled
        while queued, given up after too many attempts): its records come out of the next
        step, after whatever ``resume`` says an earlier worker published."""
        req = self._new_request(request_id, config, submitted_at, [])
        if resume is not None:
            self._apply_resume(req, resume)
            if req.finished:
                return
        self._outbox.extend(self._end(req, req.unfinished(), reason, error))

    def abort(
        self, request_ids: Iterable[str], reason: str = "cancelled", error: ErrorInfo | None = None
    ) -> list[Emission]:
        """End these requests now (running or waiting); returns their final records."""
        out: list[Emission] = []
        for rid in set(request_ids):
            req = self._detach(rid)
            if req is not None:
                out.extend(self._end(req, req.unfinished(), reason, error))
        return out

    def drop(self, request_ids: Iterable[str]) -> None:
        """Forget requests without any record (another worker owns their stream)."""
        for rid in set(request_ids):
            self._detach(rid)

    # -- the loop -------------------------------------------------------------------------

    def kv_cache_bytes(self) -> int:
        """Bytes the batch KV cache holds now, spare columns included (for metrics)."""
        return self.cache.nbytes if self.cache is not None else 0

    def has_work(self) -> bool:
        return bool(self.waiting or self.rows or self._outbox)

    def active_ids(self) -> list[str]:
        return [r.request_id for r in self.waiting] + list(self.running)

    def step(self) -> list[Emission]:
        out, self._outbox = self._outbox, []
        joined = admit(self.waiting, len(self.running), len(self.rows), self.limits)
        try:
            if joined:
                self._prefill(joined, out)
            elif self.rows:
                self._decode(out)
        except Exception as exc:  # the model failed for the whole batch: fail it, keep serving
            log.exception("engine step failed; failing the %d request(s) of the batch", len(joined) + len(self.running))
            victims = {r.request_id for r in joined} | set(self.running)
            for r in joined:
                self.running[r.request_id] = r
            message = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
            out.extend(self.abort(victims, "error", ErrorInfo("internal", message)))
        self._steps += 1
        return out

    # -- passes ---------------------------------------------------------------------------

    def _prefill(self, joined: list[Request], out: list[Emission]) -> None:
        started = time.time()
        prompts, owners = self._prefill_rows(joined)
        logits, cache = self.runner.prefill(prompts)
        # Fork: one cache row per unfinished choice (n choices of a fresh request share row i).
        fork = [i for i, (_req, choices) in enumerate(owners) for _ in choices]
        cache.keep(fork)
        logits = logits.index_select(0, torch.tensor(fork, device=logits.device))
        rows = [(req, c) for req, choices in owners for c in choices]
        elapsed = time.time() - started
        for req in joined:
            req.timings.admitted_at, req.timings.prefill_s = started, elapsed
            self.running[req.request_id] = req
        survivors = self._advance(rows, logits, out)
        cache.keep(survivors)
        if survivors:
            if self.cache is None:
                self.cache = cache
            else:
                self.cache.extend(cache)
            self.rows.extend(rows[i] for i in survivors)

    def _decode(self, out: list[Emission]) -> None:
        assert self.cache is not None
        logits = self.runner.decode(self.cache, [c.last_token for _r, c in self.rows])
        for req in {id(r): r for r, _c in self.rows}.values():
            req.timings.decode_steps += 1
        survivors = self._advance(self.rows, logits, out)
        if len(survivors) < len(self.rows):
            self.rows = [self.rows[i] for i in survivors]
            if self.rows:
                self.cache.keep(survivors)
            else:
                self.cache = None

    def _advance(self, rows: Sequence[tuple[Request, Choice]], logits: torch.Tensor, out: list[Emission]) -> list[int]:
        """Sample, detokenize and check every row; emit records; return the rows that go on."""
        now = time.time()
        logits = self._fail_broken_rows(rows, logits, out)
        sampled = sample(logits, [self._sampling(req, c) for req, c in rows])
        survivors: list[int] = []
        for i, ((req, choice), s) in enumerate(zip(rows, sampled, strict=True)):
            if choice.finish_reason is not None:  # failed above: leaves the batch
                continue
            if req.timings.first_token_at is None:
                req.timings.first_token_at = now
            req.timings.last_token_at = now
            is_stop = self._is_stop_token(req, s.token_id)
            choice.accept(s.token_id, self._logprob(req, s), is_stop_token=is_stop)
            choice.finish_reason = "stop" if is_stop or choice.detok.stopped else self._length_reason(req, choice)
            out.extend(self._emit(req, choice))
            if choice.finish_reason is None:
                survivors.append(i)
            elif req.finished:
                self.running.pop(req.request_id, None)
        return survivors

    def _fail_broken_rows(
        self, rows: Sequence[tuple[Request, Choice]], logits: torch.Tensor, out: list[Emission]
    ) -> torch.Tensor:
        """A request whose logits are not finite (NaN/inf from the model) fails alone; the
        other rows of the batch go on.  Its rows stay in place (finished), so row indices
        and the cache stay aligned until the survivors are kept."""
        finite = torch.isfinite(logits).all(dim=-1).tolist()
        if all(finite):
            return logits
        broken = {rows[i][0].request_id for i, ok in enumerate(finite) if not ok}
        error = ErrorInfo("model_error", "the model produced non-finite logits (NaN or inf)")
        for rid in broken:
            req = self.running.pop(rid)
            out.extend(self._end(req, req.unfinished(), "error", error))
        # Give finished rows harmless logits so the batch can still be sampled in one go.
        return torch.nan_to_num(logits, nan=0.0, posinf=0.0, neginf=0.0)

    # -- records --------------------------------------------------------------------------

    def _emit(self, req: Request, choice: Choice) -> list[Emission]:
        final = choice.finish_reason is not None
        choice.collect(final=final)
        if choice.finish_reason == "length" and choice.detok.stopped:
            # The final release can still complete a stop string (whole characters that were
            # waiting behind an incomplete one): that choice stopped, it did not run out.
            choice.finish_reason = "stop"
        due = final or not choice.emitted or self._steps % self.stream_interval == 0
        if not (due and (choice.has_output() or final)):
            return []
        usage = req.usage() if final and req.finished else None
        return [(req.request_id, req.make_record(choice, usage))]

    def _end(self, req: Request, choices: list[Choice], reason: str, error: ErrorInfo | None) -> list[Emission]:
        if error is not None:
            req.error = error
        out: list[Emission] = []
        for choice in choices:
            choice.finish_reason = reason
            choice.collect(final=True)
            usage = req.usage() if req.finished else None
            out.append((req.request_id, req.make_record(choice, usage)))
        return out

    # -- helpers --------------------------------------------------------------------------

    def _new_request(
        self, request_id: str, config: GenerationConfig, submitted_at: float | None, prompt_ids: list[int]
    ) -> Request:
        choices = [Choice(i, self._detokenizer(config, prompt_ids)) for i in range(config.n)]
        seed = config.seed if config.seed is not None else secrets.randbits(63)
        return Request(request_id, prompt_ids, config, seed, choices, Timings(submitted_at or time.time()))

    def _check_context(self, prompt_ids: list[int]) -> None:
        ctx = self.loaded.max_context
        if len(prompt_ids) >= ctx:
            raise PromptError(
                "prompt_too_long",
                f"the prompt has {len(prompt_ids)} tokens; {self.loaded.name} has a context of {ctx} tokens",
            )

    def _detokenizer(self, config: GenerationConfig, context_ids: list[int]) -> IncrementalDetokenizer:
        return IncrementalDetokenizer(
            self.loaded.tokenizer,
            context_ids,
            config.stop,
            config.include_stop_str_in_output,
            config.skip_special_tokens,
        )

    def _apply_resume(self, req: Request, resume: Resume) -> None:
        req.next_seq = resume.next_seq
        for c in req.choices:
            c.finish_reason = resume.finished.get(c.index)
            c.replay(resume.tokens.get(c.index, []), len(resume.texts.get(c.index, "")))
        req.resumed_tokens = sum(len(v) for v in resume.tokens.values())
        if req.finished:  # every choice ended but the record with usage was never written
            self._outbox.append((req.request_id, req.make_record(req.choices[-1], req.usage())))

    def _prefill_rows(self, joined: list[Request]) -> tuple[list[list[int]], list[tuple[Request, list[Choice]]]]:
        prompts: list[list[int]] = []
        owners: list[tuple[Request, list[Choice]]] = []
        for req in joined:
            todo = req.unfinished()
            if any(c.generated for c in req.choices):  # resumed: each choice has its own tail
                for c in todo:
                    prompts.append(req.prompt_ids + c.generated)
                    owners.append((req, [c]))
            else:
                prompts.append(req.prompt_ids)
                owners.append((req, todo))
        return prompts, owners

    def _detach(self, rid: str) -> Request | None:
        for req in self.waiting:
            if req.request_id == rid:
                self.waiting.remove(req)
                return req
        running = self.running.pop(rid, None)
        if running is not None:
            keep = [i for i, (r, _c) in enumerate(self.rows) if r is not running]
            if len(keep) < len(self.rows):
                self.rows = [self.rows[i] for i in keep]
                if self.rows and self.cache is not None:
                    self.cache.keep(keep)
                else:
                    self.cache = None
        return running

    def _sampling(self, req: Request, choice: Choice) -> RowSampling:
        cfg = req.config
        return RowSampling(
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            seed=req.seed,
            index=choice.index,
            position=len(choice.generated),
            top_logprobs=cfg.top_logprobs if cfg.logprobs else -1,
        )

    def _is_stop_token(self, req: Request, token: int) -> bool:
        return token in req.config.stop_token_ids or (not req.config.ignore_eos and token in self.loaded.eos_token_ids)

    def _length_reason(self, req: Request, choice: Choice) -> str | None:
        if len(choice.generated) >= req.config.max_tokens:
            return "length"
        if len(req.prompt_ids) + len(choice.generated) >= self.loaded.max_context:
            return "length"
        return None

    def _logprob(self, req: Request, s: Sampled) -> TokenLogprob | None:
        if s.logprob is None:
            return None
        tb = self.loaded.token_bytes
        top = [TopLogprob(token_text(tb[t]), list(tb[t]), lp) for t, lp in (s.top or [])]
        return TokenLogprob(token_text(tb[s.token_id]), list(tb[s.token_id]), s.logprob, top)
