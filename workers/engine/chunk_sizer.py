"""How many prompt tokens a step may carry while rows decode, learned from what passes cost.

Theory of operation.  A pass that decodes the running rows and prefills ``c`` prompt tokens
costs about ``base + c * per_token``: ``base`` is a plain decode step (every weight read once,
the rows' attention), ``per_token`` the arithmetic each extra token adds (and, averaged in,
whatever fixed cost carrying a chunk has).  The running rows wait for the whole pass, so a
chunk makes their inter-token gap ``1 + c * per_token / base`` times a plain step's.
`ChunkSizer` keeps that ratio at ``slowdown``: it learns ``base`` from passes without prompt
tokens and ``per_token`` from passes with them (moving averages), and sizes the next chunk so
that ``c * per_token = (slowdown - 1) * base``.  Because ``per_token`` is measured at the
chunk sizes it picks, a fixed cost per chunk is folded in, and the sizes settle where the
measured ratio is the target.

Why learned and not a constant: on the 2-core CPU here a plain SmolLM2 step costs 55-90 ms
(1-16 rows) and a prompt token ~1.8 ms, so ~15-30 tokens a step; on a GPU a plain step is a
few ms of kernel launches and a token costs microseconds, so hundreds of tokens go for the
same slowdown, and a CPU-sized constant would prefill a long prompt over dozens of steps.
Until both kinds of pass have been seen the chunk is the starting value; it grows at most
2x from one chunk to the next, so one noisy measurement cannot make one pass a stall.
"""

from __future__ import annotations

import math

SLOWDOWN = 1.7  # a step carrying a chunk takes at most this many plain steps (goal: p99 <= 2x p50)
START = 32  # prompt tokens a step, until passes have been measured
FLOOR = 4  # a prefill always progresses, however slow tokens are
_ALPHA = 0.25  # weight of the newest measurement in the moving averages


class ChunkSizer:
    """The prompt tokens the next step may carry while rows decode (`chunk`)."""

    def __init__(self, cap: int, start: int = START, slowdown: float = SLOWDOWN, floor: int = FLOOR) -> None:
        check_slowdown(slowdown)
        self.cap, self.slowdown = cap, slowdown
        self.floor = min(floor, cap)
        self.chunk = max(self.floor, min(start, cap))
        self.base_s: float | None = None  # a plain decode step, seconds
        self.per_token_s: float | None = None  # what a prompt token adds to a step, seconds

    def observe(self, prompt_tokens: int, seconds: float) -> None:
        """A pass that decoded rows and prefilled ``prompt_tokens`` (0: a plain step) took ``seconds``."""
        if prompt_tokens == 0:
            self.base_s = _average(self.base_s, seconds)
        elif self.base_s is not None:
            self.per_token_s = _average(self.per_token_s, max(0.0, seconds - self.base_s) / prompt_tokens)
            self._resize()

    def _resize(self) -> None:
        assert self.base_s is not None and self.per_token_s is not None
        room = (self.slowdown - 1) * self.base_s
        fits = int(room / self.per_token_s) if self.per_token_s > 0 else self.cap
        self.chunk = max(self.floor, min(fits, 2 * self.chunk, self.cap))


def check_slowdown(value: float, name: str = "slowdown") -> None:
    """Refuse a slowdown that sizes no chunk: <= 1 (no room for a prompt token), NaN or
    infinity (``int(room / per_token)`` would overflow).  ``name``: the field, for the message."""
    if not 1 < value < math.inf:  # NaN fails both
        raise ValueError(f"{name} must be a finite number > 1, got {value}")


def _average(old: float | None, new: float) -> float:
    return new if old is None else old + _ALPHA * (new - old)
