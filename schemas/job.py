"""The Celery task message: what the producer sends and the worker receives (JSON only)."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from schemas.config import GenerationConfig
from schemas.errors import ValidationError
from schemas.keys import check_request_id

TASK_NAME = "tokenrelay.generate"
DEFAULT_QUEUE = "tokenrelay"
_ROLES = ("system", "user", "assistant", "tool")


def queue_for_model(model: str | None) -> str:
    """Requests for a named model go to its own queue; ``None`` goes to the shared default
    queue, which every worker also consumes."""
    if model is None:
        return DEFAULT_QUEUE
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model.lower()).strip("-")
    return f"{DEFAULT_QUEUE}.{slug}"


@dataclass(frozen=True)
class Job:
    request_id: str
    config: GenerationConfig
    submitted_at: float
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    model: str | None = None
    ttl_s: int = 3600
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_request_id(self.request_id)
        if (self.prompt is None) == (self.messages is None):
            raise ValidationError("prompt", "give exactly one of prompt or messages")
        if self.prompt is not None and not isinstance(self.prompt, str):
            raise ValidationError("prompt", f"must be a string, got {type(self.prompt).__name__}")
        if self.prompt is not None and not self.prompt:
            raise ValidationError("prompt", "must not be empty")
        if self.prompt is not None:
            check_text("prompt", self.prompt)
        if self.messages is not None:
            check_messages(self.messages)
        if self.model is not None and (not isinstance(self.model, str) or not self.model):
            raise ValidationError("model", f"must be a non-empty string or None, got {self.model!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "v": JOB_VERSION,
            "request_id": self.request_id,
            "config": self.config.to_dict(),
            "submitted_at": self.submitted_at,
            "prompt": self.prompt,
            "messages": self.messages,
            "model": self.model,
            "ttl_s": self.ttl_s,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: object) -> Job:
        """Parse a task payload; anything wrong raises ValidationError naming the field (never
        a TypeError or KeyError: a worker must be able to end such a request cleanly)."""
        if not isinstance(d, Mapping):
            raise ValidationError("payload", f"must be a map, got {type(d).__name__}")
        unknown = sorted(str(k) for k in d if k not in _FIELDS)
        if unknown:
            raise ValidationError(unknown[0], f"unknown field in the task message (known: {', '.join(_FIELDS)})")
        version = d.get("v", JOB_VERSION)  # payloads from before versioning are version 1
        if version != JOB_VERSION:
            raise ValidationError("v", f"unknown task message version {version!r}; this worker reads {JOB_VERSION}")
        for name in ("request_id", "submitted_at"):
            if name not in d:
                raise ValidationError(name, "missing from the task message")
        config = d.get("config") or {}
        if not isinstance(config, Mapping):
            raise ValidationError("config", f"must be a map, got {type(config).__name__}")
        extra = d.get("extra") or {}
        if not isinstance(extra, Mapping):
            raise ValidationError("extra", f"must be a map, got {type(extra).__name__}")
        return cls(
            request_id=d["request_id"],
            config=GenerationConfig.from_dict(config),
            submitted_at=_number(d["submitted_at"], "submitted_at"),
            prompt=d.get("prompt"),
            messages=d.get("messages"),
            model=d.get("model"),
            ttl_s=_ttl(d.get("ttl_s", 3600)),
            extra=dict(extra),
        )

    def digest(self) -> str:
        """What makes two submits "the same job" for an idempotent submit under one caller-supplied
        id: prompt or messages, model and config (not the submit time, TTL or bookkeeping extras)."""
        same = {"prompt": self.prompt, "messages": self.messages, "model": self.model, "config": self.config.to_dict()}
        blob = json.dumps(same, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(blob.encode()).hexdigest()


JOB_VERSION = 1
MAX_TTL_S = 10 * 365 * 86_400  # Redis takes larger EXPIREs, but such a value is a mistake
_FIELDS = ("v", "request_id", "config", "submitted_at", "prompt", "messages", "model", "ttl_s", "extra")


def request_id_of(payload: object) -> str | None:
    """The request id of a raw task payload, even when the rest of it is invalid (so that a
    worker can end such a request with an ``error`` record); None when there is no usable one."""
    rid = payload.get("request_id") if isinstance(payload, Mapping) else None
    try:
        return check_request_id(rid)
    except ValidationError:
        return None


def check_text(field: str, text: str) -> str:
    """Text that must become UTF-8 for the tokenizer: a lone surrogate (``"\\ud800"``, which
    JSON and Python strings allow) cannot, and would fail later as a raw tokenizer error."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = f"holds a lone surrogate at position {exc.start} (not valid Unicode text)"
        raise ValidationError(field, message) from None
    return text


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(field, f"must be a number, got {value!r}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValidationError(field, f"must be a finite number, got {value!r}")
    return number


def _ttl(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TTL_S:
        raise ValidationError("ttl_s", f"must be an integer number of seconds from 1 to {MAX_TTL_S}, got {value!r}")
    return value


def check_messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:
        raise ValidationError("messages", "must be a non-empty list of {role, content} maps")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or set(m) - {"role", "content", "name"} or "role" not in m or "content" not in m:
            raise ValidationError(f"messages[{i}]", f"must be a map with role and content, got {m!r}")
        if m["role"] not in _ROLES:
            raise ValidationError(f"messages[{i}].role", f"must be one of {', '.join(_ROLES)}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise ValidationError(f"messages[{i}].content", "must be a string")
        check_text(f"messages[{i}].content", m["content"])
        if "name" in m and not isinstance(m["name"], str):
            raise ValidationError(f"messages[{i}].name", "must be a string")
    return [dict(m) for m in messages]
