"""Admission: which waiting requests start their prefill (and then join the batch) next.

Strictly first come, first served: when the oldest waiting request does not fit, nothing
behind it jumps ahead (a long prompt is never starved by a stream of short ones).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from schemas.errors import EngineFull
from workers.engine.chunk_sizer import SLOWDOWN, check_slowdown
from workers.engine.sequence import Request

__all__ = ["EngineFull", "Limits", "admit"]


@dataclass(frozen=True)
class Limits:
    max_running: int = 64  # requests decoding at once (benchmark 12: throughput grows to ~64 rows on CPU)
    max_batch_rows: int = 64  # rows (one per choice) in the decode batch
    max_batch_tokens: int = 2048  # prompt tokens prefilled in one pass while no row decodes
    max_queued: int = 256  # requests waiting to be admitted; beyond that `EngineFull`
    # Prompt tokens prefilled per step while rows decode (chunked prefill, core.py): more
    # means a faster TTFT for long prompts and slower steps for the decoding rows (README,
    # "load sweep": 32 keeps their inter-token p99 within 2x p50 on a 2-core CPU, 64 does not).
    # None ("auto"): as many as keep such a step within 1.7 plain decode steps, measured as it
    # runs (chunk_sizer.py: ~15-30 here, hundreds where prompt tokens are cheap, as on a GPU).
    prefill_chunk: int | None = 32
    # With "auto": how many plain decode steps a step carrying prompt tokens may take.  Lower
    # is a smoother stream for the running rows and a later first token for the joining one
    # (README, benchmark 12's eleventh pass: 1.4 cost 1.5-2x the TTFT p50 in process).
    step_slowdown: float = SLOWDOWN

    def __post_init__(self) -> None:
        for name in ("max_running", "max_batch_rows", "max_batch_tokens", "max_queued", "prefill_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        check_slowdown(self.step_slowdown, "step_slowdown")


def admit(
    waiting: deque[Request], running_requests: int, running_rows: int, limits: Limits, max_tokens: int | None = None
) -> list[Request]:
    """The waiting requests (from the head, in arrival order) whose prefill starts now; they
    stay in ``waiting`` until it completes.  ``max_tokens`` overrides ``max_batch_tokens``."""
    joined: list[Request] = []
    tokens = 0
    budget = limits.max_batch_tokens if max_tokens is None else max_tokens
    for req in waiting:
        rows = len(req.unfinished())
        prompt = len(req.prompt_ids) + max((len(c.generated) for c in req.choices), default=0)
        if running_requests + len(joined) + 1 > limits.max_running:
            break
        if running_rows + rows > limits.max_batch_rows and (running_rows or joined):
            break
        if tokens + prompt * _prefill_rows(req) > budget and joined:
            break
        joined.append(req)
        running_rows += rows
        tokens += prompt * _prefill_rows(req)
    return joined


def _prefill_rows(req: Request) -> int:
    # A fresh request prefills its prompt once for all choices; a resumed one prefills
    # each unfinished choice separately (their generated tails differ).
    return len(req.unfinished()) if any(c.generated for c in req.choices) else 1
