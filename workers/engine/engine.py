"""The decode engine: an engine core behind an output processor (output.py).

The engine knows nothing of Celery or Redis: the runner feeds it and publishes its output.
`Engine` is the runner's interface; it only joins the two halves (see `Engine.step`).  The
core is the builtin one (core.py: torch + transformers) or vLLM's (vllm_core.py): anything
that satisfies `Core` turns prompts into token ids; the records, their text, stop strings,
finish reasons, seq, usage and resume are the output processor's, the same for every core.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Mapping, Sized
from typing import Protocol

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo
from workers.engine.core import EngineCore
from workers.engine.model_runner import LoadedModel
from workers.engine.output import CoreStep, Emission, Finished, OutputProcessor, Resume
from workers.engine.prompt import PromptError, encode_prompt
from workers.engine.scheduler import EngineFull, Limits

__all__ = ["Core", "Emission", "Engine", "Resume"]
log = logging.getLogger(__name__)


class Batch(Protocol):
    @property
    def rows(self) -> Sized: ...  # the sequences (choices) decoding now
    @property
    def nbytes(self) -> int: ...  # what the KV cache holds


class Core(Protocol):
    """What `Engine` needs of an engine core: token ids in, token ids (`CoreStep`) out."""

    limits: Limits

    @property
    def batch(self) -> Batch: ...
    @property
    def waiting(self) -> Collection[object]: ...  # queued in the core, not running yet
    @property
    def running(self) -> Mapping[str, object]: ...  # request id -> the core's state

    def add(self, request_id: str, prompt_ids: list[int], config: GenerationConfig, resume: Resume | None) -> None:
        """Queue a request; a resumed one brings the tokens already published per choice."""

    def remove(self, request_id: str) -> bool:
        """Take a request out, waiting or running; False if it is not here."""

    def step(self) -> CoreStep | None:
        """One pass and its draws; None when there is nothing to run."""

    def finish(self, finished: Iterable[Finished]) -> None:
        """The output processor's verdict on the last step: these choices are done."""

    def abandon_pass(self) -> set[str]:
        """After a pass failed: forget the pass; return the requests the caller must end."""


class Engine:
    def __init__(
        self, loaded: LoadedModel, limits: Limits | None = None, stream_interval: int = 1, core: Core | None = None
    ) -> None:
        self.loaded = loaded
        self.output = OutputProcessor(
            loaded.tokenizer, loaded.token_bytes, loaded.eos_token_ids, loaded.max_context, stream_interval
        )
        self.core: Core = core if core is not None else EngineCore(loaded, limits or Limits())
        self._outbox: list[Emission] = []  # records made outside a step (rejections, resumes)
        self._steps = 0

    # -- what the runner and the metrics read -----------------------------------------------

    @property
    def limits(self) -> Limits:
        return self.core.limits

    @property
    def stream_interval(self) -> int:
        return self.output.stream_interval

    @property
    def waiting(self) -> Collection[object]:
        return self.core.waiting

    @property
    def running(self) -> Mapping[str, object]:
        return self.core.running

    @property
    def rows(self) -> Sized:
        """The sequences (choices) decoding now."""
        return self.core.batch.rows

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
        if len(self.core.waiting) >= self.limits.max_queued:
            raise EngineFull(f"{len(self.core.waiting)} requests already waiting (max_queued={self.limits.max_queued})")
        try:
            prompt_ids = encode_prompt(self.loaded, prompt, messages)
            self._check_context(prompt_ids)
        except PromptError as exc:
            self._outbox.extend(
                self.output.reject(request_id, config, "error", ErrorInfo(exc.kind, str(exc)), submitted_at)
            )
            return
        self._outbox.extend(self.output.add(request_id, prompt_ids, config, submitted_at, resume))
        if request_id not in self.output:  # a resume shows every choice already ended
            return
        try:
            self.core.add(request_id, prompt_ids, config, resume)
        except ValueError as exc:  # the core refuses it (vLLM checks lengths and parameters itself)
            self._outbox.extend(self.output.end(request_id, "error", ErrorInfo("invalid_request", str(exc))))

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
        self._outbox.extend(self.output.reject(request_id, config, reason, error, submitted_at, resume))

    def abort(
        self, request_ids: Iterable[str], reason: str = "cancelled", error: ErrorInfo | None = None
    ) -> list[Emission]:
        """End these requests now (running or waiting); returns their final records."""
        out: list[Emission] = []
        for rid in set(request_ids):
            if self.core.remove(rid):
                out.extend(self.output.end(rid, reason, error))
        return out

    def drop(self, request_ids: Iterable[str]) -> None:
        """Forget requests without any record (another worker owns their stream)."""
        for rid in set(request_ids):
            self.core.remove(rid)
            self.output.forget(rid)

    # -- the loop -------------------------------------------------------------------------

    def kv_cache_bytes(self) -> int:
        """Bytes the batch KV cache holds now, spare columns included (for metrics)."""
        return self.core.batch.nbytes

    def has_work(self) -> bool:
        return bool(self.core.waiting or self.core.batch.rows or self._outbox)

    def active_ids(self) -> list[str]:
        return list(self.output.requests)

    def step(self) -> list[Emission]:
        """One forward pass; returns the records to publish, as ``(request_id, Record)``.

        1. The core runs one pass: the builtin core decodes one token for every running row
           and, in the same pass, prefills a chunk of the waiting requests it admitted (first
           come, first served); vLLM's core runs one step of its own scheduler.  Out come token
           ids and raw logprobs per row (`CoreStep`), no text.
        2. The output processor detokenizes, applies stop tokens, stop strings and length,
           numbers the records (the last one of a request carries its usage) and says which
           choices finished.
        3. The core frees the finished rows (batch rows and KV cache together).
        If the model fails for the whole batch, every request of the batch ends with an
        ``error`` record and the engine keeps serving.  Records made between steps
        (rejections, prompt errors, finished resumes) come out first.
        """
        out, self._outbox = self._outbox, []
        try:
            produced = self.core.step()
            if produced is not None:
                self.core.finish(self.output.process(produced, self._steps, out))
        except Exception as exc:
            victims = self.core.abandon_pass()
            log.exception("engine step failed; failing the %d request(s) of the batch", len(victims))
            message = f"{type(exc).__name__}: {exc}" if str(exc) else repr(exc)
            out.extend(self.abort(victims, "error", ErrorInfo("internal", message)))
        self._steps += 1
        return out

    def _check_context(self, prompt_ids: list[int]) -> None:
        ctx = self.loaded.max_context
        if len(prompt_ids) >= ctx:
            raise PromptError(
                "prompt_too_long",
                f"the prompt has {len(prompt_ids)} tokens; {self.loaded.name} has a context of {ctx} tokens",
            )
