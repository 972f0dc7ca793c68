"""Admission: which waiting requests join the batch at the next step boundary.

Strictly first come, first served: when the oldest waiting request does not fit, nothing
behind it jumps ahead (a long prompt is never starved by a stream of short ones).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from schemas.errors import EngineFull
from workers.engine.sequence import Request

__all__ = ["EngineFull", "Limits", "admit"]


@dataclass(frozen=True)
class Limits:
    max_running: int = 64  # requests decoding at once (benchmark 12: throughput grows to ~64 rows on CPU)
    max_batch_rows: int = 64  # rows (one per choice) in the decode batch
    max_batch_tokens: int = 2048  # prompt tokens in one prefill pass
    max_queued: int = 256  # requests waiting to be admitted; beyond that `EngineFull`

    def __post_init__(self) -> None:
        for name in ("max_running", "max_batch_rows", "max_batch_tokens", "max_queued"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def admit(waiting: deque[Request], running_requests: int, running_rows: int, limits: Limits) -> list[Request]:
    """Pop and return the waiting requests that join now, in arrival order."""
    joined: list[Request] = []
    tokens = 0
    while waiting:
        req = waiting[0]
        rows = len(req.unfinished())
        prompt = len(req.prompt_ids) + max((len(c.generated) for c in req.choices), default=0)
        if running_requests + len(joined) + 1 > limits.max_running:
            break
        if running_rows + rows > limits.max_batch_rows and (running_rows or joined):
            break
        if tokens + prompt * _prefill_rows(req) > limits.max_batch_tokens and joined:
            break
        joined.append(waiting.popleft())
        running_rows += rows
        tokens += prompt * _prefill_rows(req)
    return joined


def _prefill_rows(req: Request) -> int:
    # A fresh request prefills its prompt once for all choices; a resumed one prefills
    # each unfinished choice separately (their generated tails differ).
    return len(req.unfinished()) if any(c.generated for c in req.choices) else 1
