"""A batch's progress and results, folded from its items' own keys.  Pure: no I/O.

Progress does not depend on any worker hook: each item's status and tokens come from the meta
hash every request keeps (the producer writes it at submit, the lease scripts move
``status`` to running / finished / cancelled / failed and keep ``tokens`` current), read in
one pipelined round trip for the whole batch.  consumer/batch_io.py performs the I/O.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from consumer.result import Result
from schemas.errors import ValidationError

META_FIELDS = ("status", "tokens", "submitted_at")
FINAL = ("finished", "cancelled", "failed", "expired")


@dataclass(frozen=True)
class BatchProgress:
    """``done`` counts items that finished normally; ``failed`` includes expired ones."""

    batch_id: str
    status: str  # submitting, submitted, interrupted, cancelled (what the producer did)
    total: int
    submitted: int
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    tokens: int  # generated so far, over every item
    created_at: float
    model: str | None = None

    @property
    def finished(self) -> int:
        return self.done + self.failed + self.cancelled

    @property
    def complete(self) -> bool:
        """Every item has ended (nothing more will change): every item of the batch, or every
        item that went out when the submission was interrupted or cancelled part way."""
        expected = self.submitted if self.status in ("interrupted", "cancelled") else self.total
        return self.finished >= expected

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.batch_id, "status": self.status, "total": self.total, "submitted": self.submitted,
            "queued": self.queued, "running": self.running, "done": self.done, "failed": self.failed,
            "cancelled": self.cancelled, "tokens": self.tokens, "created_at": self.created_at,
            "model": self.model, "finished": self.finished, "complete": self.complete,
        }  # fmt: skip


@dataclass(frozen=True)
class BatchItemResult:
    """One item's outcome, in input order.  ``status``: finished, cancelled, failed, expired
    (its keys are gone) or not_submitted (the submission stopped before it)."""

    index: int
    custom_id: str | None
    request_id: str | None
    status: str
    result: Result | None
    error: dict[str, str] | None = None
    chat: bool = False  # submitted as messages (an OpenAI chat completion) or as a prompt


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_items(raw: Mapping[Any, Any]) -> dict[int, dict[str, Any]]:
    """The items hash: position -> ``{"id", "custom_id"}``."""
    return {int(text(k)): json.loads(v) for k, v in raw.items()}


def parse_meta(batch_id: str, raw: Mapping[Any, Any]) -> dict[str, str]:
    if not raw:
        raise ValidationError("batch_id", f"unknown or expired batch {batch_id!r}")
    return {text(k): text(v) for k, v in raw.items()}


def item_status(fields: Sequence[Any]) -> str:
    """From HMGET meta status tokens submitted_at: no meta at all means expired."""
    status, _tokens, submitted = fields
    if status is None:
        return "expired" if submitted is None else "queued"
    return text(status)


def progress(
    batch_id: str, meta: Mapping[str, str], items: Mapping[int, Any], metas: Sequence[Sequence[Any]]
) -> BatchProgress:
    """``metas``: HMGET replies of `META_FIELDS`, one per item of ``items`` in key order."""
    counts = {"queued": 0, "running": 0, "finished": 0, "failed": 0, "cancelled": 0}
    tokens = 0
    for fields in metas:
        status = item_status(fields)
        counts["failed" if status == "expired" else status if status in counts else "queued"] += 1
        tokens += int(fields[1] or 0)
    return BatchProgress(
        batch_id=batch_id,
        status=meta.get("status", "submitted"),
        total=int(meta.get("total", len(items))),
        submitted=len(items),
        queued=counts["queued"],
        running=counts["running"],
        done=counts["finished"],
        failed=counts["failed"],
        cancelled=counts["cancelled"],
        tokens=tokens,
        created_at=float(meta.get("created_at", 0.0)),
        model=meta.get("model") or None,
    )


def outcome(result: Result) -> str:
    """A whole stream's status: failed beats cancelled beats finished."""
    if result.error is not None or "error" in result.finish_reasons:
        return "failed"
    return "cancelled" if "cancelled" in result.finish_reasons else "finished"
