"""`Result`: one request's records folded into whole texts per choice.  Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.records import ErrorInfo, Record, TokenLogprob, Usage

# A record that says ``finish_reason="error"`` but carries no ``error`` map still means failure;
# this stands in for the missing details so that GenerationFailed always has a type and message.
UNKNOWN_ERROR = ErrorInfo(type="unknown", message="the worker reported finish_reason=error without details")


@dataclass(frozen=True)
class Result:
    """Everything one request produced, as a non-streaming caller wants it.

    Lists are indexed by choice (``Record.index``).  ``logprobs[i]`` is None when no record of
    choice ``i`` carried logprobs (they were not asked for).  ``records`` counts the records
    read; ``last_entry_id`` is the cursor to resume after them.
    """

    texts: list[str]
    finish_reasons: list[str | None]
    token_ids: list[list[int]]
    logprobs: list[list[TokenLogprob] | None]
    usage: Usage | None
    error: ErrorInfo | None
    records: int
    last_entry_id: str | None

    @property
    def text(self) -> str:
        """The first choice's text: the common ``n=1`` case."""
        return self.texts[0] if self.texts else ""

    @property
    def finish_reason(self) -> str | None:
        return self.finish_reasons[0] if self.finish_reasons else None


@dataclass
class _Choice:
    parts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None


class ResultBuilder:
    """Accumulates records in stream order; `build` may be called at any point (partial result)."""

    def __init__(self) -> None:
        self._choices: list[_Choice] = []
        self._usage: Usage | None = None
        self._error: ErrorInfo | None = None
        self._count = 0
        self._last_entry_id: str | None = None

    @property
    def error(self) -> ErrorInfo | None:
        """The first failure seen, if any."""
        return self._error

    def add(self, record: Record) -> None:
        choice = self._choice(record.index)
        # Parts are joined once in `build`: repeated str += would be quadratic on long outputs.
        choice.parts.append(record.text)
        choice.token_ids.extend(record.token_ids)
        if record.logprobs is not None:
            if choice.logprobs is None:
                choice.logprobs = []
            choice.logprobs.extend(record.logprobs)
        if record.finish_reason is not None:
            choice.finish_reason = record.finish_reason
        if record.usage is not None:
            self._usage = record.usage
        if self._error is None and (record.error is not None or record.finish_reason == "error"):
            self._error = record.error or UNKNOWN_ERROR
        self._count += 1
        self._last_entry_id = record.entry_id or self._last_entry_id

    def build(self) -> Result:
        return Result(
            texts=["".join(c.parts) for c in self._choices],
            finish_reasons=[c.finish_reason for c in self._choices],
            token_ids=[list(c.token_ids) for c in self._choices],
            logprobs=[None if c.logprobs is None else list(c.logprobs) for c in self._choices],
            usage=self._usage,
            error=self._error,
            records=self._count,
            last_entry_id=self._last_entry_id,
        )

    def _choice(self, index: int) -> _Choice:
        while len(self._choices) <= index:
            self._choices.append(_Choice())
        return self._choices[index]
