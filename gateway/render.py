"""tokenrelay records and results -> OpenAI's JSON shapes.  Pure: no I/O.

Finish reasons: ``stop`` and ``length`` pass through; ``cancelled`` and ``error`` are not in
OpenAI's set, so the official clients (which type the field as a literal) see ``stop`` and the
choice carries ``tokenrelay_finish_reason`` with the real one.  A failed request also ends its
stream with an error event (see gateway/sse.py), and a non-streaming one answers with an error
status (gateway/errors.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consumer.result import Result
from gateway.translate import Api
from schemas.records import Record, TokenLogprob, Usage

OPENAI_FINISH = {"stop": "stop", "length": "length", "cancelled": "stop", "error": "stop"}


def finish_fields(reason: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"finish_reason": None if reason is None else OPENAI_FINISH.get(reason, "stop")}
    if reason is not None and out["finish_reason"] != reason:
        out["tokenrelay_finish_reason"] = reason
    return out


def usage_dict(usage: Usage | None) -> dict[str, Any] | None:
    """OpenAI's three counts, plus tokenrelay's timings (clients keep extra fields)."""
    return None if usage is None else usage.to_wire()


def completion_logprobs(logprobs: list[TokenLogprob], offset: int) -> dict[str, Any]:
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top_logprobs} for lp in logprobs],
        "text_offset": offsets,
    }


def chat_logprobs(logprobs: list[TokenLogprob]) -> dict[str, Any]:
    def one(lp: TokenLogprob) -> dict[str, Any]:
        tops = [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes} for t in lp.top_logprobs]
        return {"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes, "top_logprobs": tops}

    return {"content": [one(lp) for lp in logprobs], "refusal": None}


@dataclass
class Head:
    """What every object of one request repeats."""

    api: Api
    request_id: str
    model: str
    created: int

    def object(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.request_id, "object": kind, "created": self.created, "model": self.model, "choices": choices}


@dataclass
class ChunkRenderer:
    """Stream records -> chunks.  ``role`` goes on the first chunk of each choice this
    response sends when it starts at the beginning (a resumed stream already had it)."""

    head: Head
    include_usage: bool
    from_start: bool
    _roled: set[int] = field(default_factory=set)
    _offsets: dict[int, int] = field(default_factory=dict)

    def chunks(self, record: Record) -> list[dict[str, Any]]:
        out = [self._choice_chunk(record)]
        if self.include_usage and record.usage is not None:
            usage_chunk = self.head.object(self._kind(), [])
            usage_chunk["usage"] = usage_dict(record.usage)
            out.append(usage_chunk)
        return out

    def _kind(self) -> str:
        return "text_completion" if self.head.api == "completion" else "chat.completion.chunk"

    def _choice_chunk(self, record: Record) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": record.index}
        if self.head.api == "completion":
            choice["text"] = record.text
            choice["logprobs"] = self._completion_logprobs(record)
        else:
            choice["delta"] = self._delta(record)
            choice["logprobs"] = None if record.logprobs is None else chat_logprobs(record.logprobs)
        choice.update(finish_fields(record.finish_reason))
        chunk = self.head.object(self._kind(), [choice])
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def _delta(self, record: Record) -> dict[str, Any]:
        delta: dict[str, Any] = {"content": record.text}
        if self.from_start and record.index not in self._roled:
            self._roled.add(record.index)
            delta = {"role": "assistant", **delta}
        return delta

    def _completion_logprobs(self, record: Record) -> dict[str, Any] | None:
        if record.logprobs is None:
            return None
        offset = self._offsets.get(record.index, 0)
        self._offsets[record.index] = offset + sum(len(lp.token) for lp in record.logprobs)
        return completion_logprobs(record.logprobs, offset)


def response(head: Head, result: Result) -> dict[str, Any]:
    """The non-streaming answer from a whole result."""
    choices = []
    for i, text in enumerate(result.texts):
        logprobs = result.logprobs[i]
        choice: dict[str, Any] = {"index": i}
        if head.api == "completion":
            choice["text"] = text
            choice["logprobs"] = None if logprobs is None else completion_logprobs(logprobs, 0)
        else:
            choice["message"] = {"role": "assistant", "content": text}
            choice["logprobs"] = None if logprobs is None else chat_logprobs(logprobs)
        choice.update(finish_fields(result.finish_reasons[i]))
        choices.append(choice)
    body = head.object("text_completion" if head.api == "completion" else "chat.completion", choices)
    body["usage"] = usage_dict(result.usage)
    return body
