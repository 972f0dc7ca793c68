"""The wire records: one msgpack map per stream entry, in the entry's field ``r``.

One record shape serves every step (as MLC LLM's ``CallbackStreamOutput``):

=================  ==============  ==========================================================
field              type            meaning
=================  ==============  ==========================================================
``v``              int             schema version, 1; a reader refuses versions it does not know
``seq``            int             0, 1, 2, ... per request, never repeated, never skipped
``index``          int             which of the ``n`` choices this record belongs to
``text``           str             new text of that choice: whole UTF-8 characters only
``token_ids``      list[int]       the tokens behind ``text``; a token whose text is held back
                                   (split character, possible stop string) appears in the
                                   record that releases it.  All records of a choice together
                                   list every generated token, stop tokens included
``logprobs``       list | nil      one entry per token of ``token_ids`` (only when asked):
                                   ``token`` (the token's text; bytes that are not whole
                                   characters are written ``\\xNN``), ``bytes`` (its raw UTF-8
                                   bytes as a list of ints), ``logprob`` and ``top_logprobs``
                                   (list of ``{token, bytes, logprob}``, most likely first).
                                   Values come from the distribution actually sampled from:
                                   after temperature, top-k and top-p (filtered tokens are
                                   -inf).  For greedy requests (temperature 0) that distribution
                                   is a point mass, so the raw ``log_softmax`` of the logits is
                                   reported instead.
``finish_reason``  str | nil       ``stop``, ``length``, ``cancelled`` or ``error`` on the
                                   choice's last record
``usage``          map | nil       only on the very last record of the stream (`Usage`)
``error``          map | nil       ``{type, message}`` when the request failed
=================  ==============  ==========================================================

The last record of every stream carries ``usage``; nothing follows it.  Every field is always
present in the map (nil where unset), so readers in any language need no defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

from schemas.errors import SchemaError

SCHEMA_VERSION = 1
FIELD = "r"  # the one field of every stream entry
FINISH_REASONS = ("stop", "length", "cancelled", "error")


@dataclass(frozen=True, slots=True)
class TopLogprob:
    token: str
    bytes: list[int]
    logprob: float

    def to_wire(self) -> dict[str, Any]:
        return {"token": self.token, "bytes": self.bytes, "logprob": self.logprob}


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token: str
    bytes: list[int]
    logprob: float
    top_logprobs: list[TopLogprob] = field(default_factory=list)

    def to_wire(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "bytes": self.bytes,
            "logprob": self.logprob,
            "top_logprobs": [t.to_wire() for t in self.top_logprobs],
        }


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts and timings of the whole request (all choices), on the last record.

    Timings are in seconds, measured on the worker where they happen: ``queue_s`` from
    submit to the start of prefill, ``ttft_s`` from submit to the first token published,
    ``prefill_tokens_per_s`` over the prefill pass, ``decode_tokens_per_s`` over the tokens
    after the first, ``inter_token_latency_s`` the mean gap between decode steps of the
    request, ``e2e_s`` from submit to the last record.
    """

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    queue_s: float = 0.0
    ttft_s: float | None = None
    prefill_tokens_per_s: float | None = None
    decode_tokens_per_s: float | None = None
    inter_token_latency_s: float | None = None
    e2e_s: float = 0.0

    def to_wire(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "queue_s": self.queue_s,
            "ttft_s": self.ttft_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "inter_token_latency_s": self.inter_token_latency_s,
            "e2e_s": self.e2e_s,
        }


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    type: str
    message: str

    def to_wire(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message}


@dataclass(slots=True)
class Record:
    """One stream record.  ``entry_id`` is the stream entry it was read from (the resume
    cursor); it is not part of the wire map.  Not frozen: a frozen dataclass's ``__init__``
    costs ~1 µs more per record, and readers build one per stream entry."""

    seq: int
    index: int = 0
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    finish_reason: str | None = None
    usage: Usage | None = None
    error: ErrorInfo | None = None
    v: int = SCHEMA_VERSION
    entry_id: str | None = field(default=None, compare=False)

    @property
    def is_last(self) -> bool:
        """True on the final record of the stream (the one that carries usage)."""
        return self.usage is not None

    def to_wire(self) -> dict[str, Any]:
        return {
            "v": self.v,
            "seq": self.seq,
            "index": self.index,
            "text": self.text,
            "token_ids": self.token_ids,
            "logprobs": None if self.logprobs is None else [lp.to_wire() for lp in self.logprobs],
            "finish_reason": self.finish_reason,
            "usage": None if self.usage is None else self.usage.to_wire(),
            "error": None if self.error is None else self.error.to_wire(),
        }


def encode(record: Record) -> bytes:
    """msgpack bytes for the entry field ``r``."""
    return msgpack.packb(record.to_wire(), use_bin_type=True)


def decode(data: bytes, entry_id: str | None = None) -> Record:
    """The one decoder: bytes of field ``r`` to a :class:`Record`, or :class:`SchemaError`."""
    try:
        m = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise SchemaError(f"record is not valid msgpack: {exc}") from exc
    if not isinstance(m, dict):
        raise SchemaError(f"record must be a msgpack map, got {type(m).__name__}")
    v = m.get("v")
    if v != SCHEMA_VERSION:
        raise SchemaError(f"unknown record schema version {v!r}; this reader knows version {SCHEMA_VERSION}")
    try:
        return _record_from_map(m, entry_id)
    except SchemaError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise SchemaError(f"malformed record: {exc!r}") from exc


def _check(cond: bool, what: str) -> None:
    if not cond:
        raise SchemaError(f"malformed record: {what}")


def _record_from_map(m: dict[str, Any], entry_id: str | None) -> Record:
    seq, index, text, token_ids = m["seq"], m["index"], m["text"], m["token_ids"]
    # Plain ifs, not _check(cond, f"..."): this runs per record, and an f-string argument
    # would be formatted every time even when nothing is wrong.
    if type(seq) is not int or seq < 0:
        raise SchemaError(f"malformed record: seq must be an int >= 0, got {seq!r}")
    if type(index) is not int or index < 0:
        raise SchemaError(f"malformed record: index must be an int >= 0, got {index!r}")
    if type(text) is not str:
        raise SchemaError("malformed record: text must be a string")
    if type(token_ids) is not list or not all(type(t) is int for t in token_ids):
        raise SchemaError("malformed record: token_ids must be a list of ints")
    finish = m["finish_reason"]
    if finish is not None and finish not in FINISH_REASONS:
        raise SchemaError(f"malformed record: unknown finish_reason {finish!r}")
    lps, usage, error = m["logprobs"], m["usage"], m["error"]
    return Record(
        seq=seq,
        index=index,
        text=text,
        token_ids=token_ids,
        logprobs=None if lps is None else _logprobs(lps),
        finish_reason=finish,
        usage=None if usage is None else _usage(usage),
        error=None if error is None else _error(error),
        v=m["v"],
        entry_id=entry_id,
    )


def _logprobs(lps: Any) -> list[TokenLogprob]:
    _check(type(lps) is list, "logprobs must be a list or nil")
    return [_token_logprob(x) for x in lps]


def _token_logprob(x: Any) -> TokenLogprob:
    _check(type(x) is dict, "each logprobs entry must be a map")
    tops = x.get("top_logprobs") or []
    _check(type(tops) is list, "top_logprobs must be a list")
    return TokenLogprob(
        token=_token_text(x["token"]),
        bytes=_byte_list(x["bytes"]),
        logprob=_number(x["logprob"], "logprob"),
        top_logprobs=[_top_logprob(t) for t in tops],
    )


def _top_logprob(t: Any) -> TopLogprob:
    _check(type(t) is dict, "each top_logprobs entry must be a map")
    return TopLogprob(_token_text(t["token"]), _byte_list(t["bytes"]), _number(t["logprob"], "logprob"))


def _token_text(value: Any) -> str:
    _check(type(value) is str, "a logprob's token must be a string")
    return str(value)


def _byte_list(value: Any) -> list[int]:
    _check(type(value) is list and all(type(b) is int and 0 <= b < 256 for b in value), "bytes must be a list of bytes")
    return list(value)


def _number(value: Any, what: str) -> float:
    _check(type(value) in (int, float), f"{what} must be a number")
    return float(value)


def _error(e: Any) -> ErrorInfo:
    _check(type(e) is dict and type(e.get("type")) is str and type(e.get("message")) is str,
           "error must be a map of strings type and message")  # fmt: skip
    return ErrorInfo(type=e["type"], message=e["message"])


_USAGE_FIELDS = tuple(Usage.__dataclass_fields__)
_USAGE_COUNTS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _usage(u: Any) -> Usage:
    _check(isinstance(u, dict), "usage must be a map")
    values = {k: u[k] for k in _USAGE_FIELDS if k in u}
    for k, v in values.items():
        if k in _USAGE_COUNTS:
            _check(type(v) is int and v >= 0, f"usage.{k} must be an int >= 0")
        else:
            _check(v is None or type(v) in (int, float), f"usage.{k} must be a number or nil")
    return Usage(**values)
