"""`GenerationConfig`: what to generate, validated before anything is enqueued.

Every field is checked by type and range; an unknown field or a bad value raises
:class:`~schemas.errors.ValidationError` naming the field.  The config travels to the
worker as a plain JSON dict (``to_dict`` / ``from_dict``), never pickled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.errors import ValidationError

MAX_N = 64
MAX_TOKENS = 1_000_000  # upper bound of max_tokens: far above any context window, below abuse
MAX_TOP_LOGPROBS = 20
MAX_STOP_STRINGS = 16


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling and stopping parameters of one request (vLLM / OpenAI semantics).

    - ``max_tokens``: new tokens per choice, 1 to ``MAX_TOKENS`` (1,000,000).
    - ``temperature``: 0 means greedy (argmax); otherwise logits are divided by it.
    - ``top_p``: nucleus sampling, 0 < p <= 1 (1 = off).  ``top_k``: 0 = off.
    - ``seed``: same seed, config and model give the same tokens (see README, "Determinism").
    - ``stop``: strings matched across token boundaries; the match is never streamed unless
      ``include_stop_str_in_output``.  ``stop_token_ids``: token ids that end a choice.
    - ``ignore_eos``: keep going past the model's end-of-sequence token.
    - ``n``: parallel choices sharing one prefill.
    - ``logprobs``: report each token's logprob; ``top_logprobs``: and that many alternatives.
    - ``skip_special_tokens``: leave special tokens out of the text (their ids still stream).
    """

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        # Normalise before validating so that lists and a lone stop string are accepted.
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        elif isinstance(self.stop, Iterable) and not isinstance(self.stop, (bytes, Mapping)):
            object.__setattr__(self, "stop", tuple(self.stop))
        if isinstance(self.stop_token_ids, Iterable) and not isinstance(self.stop_token_ids, (str, bytes, Mapping)):
            object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        object.__setattr__(self, "temperature", _int_to_float(self.temperature))
        object.__setattr__(self, "top_p", _int_to_float(self.top_p))
        _validate(self)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; ``from_dict(to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        out["stop"] = list(self.stop)
        out["stop_token_ids"] = list(self.stop_token_ids)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GenerationConfig:
        if not isinstance(data, Mapping):
            raise ValidationError("config", f"must be a mapping, got {type(data).__name__}")
        check_known_fields(data)
        return cls(**data)

    def replace(self, **changes: Any) -> GenerationConfig:
        check_known_fields(changes)
        return dataclasses.replace(self, **changes)


FIELD_NAMES: frozenset[str] = frozenset(f.name for f in dataclasses.fields(GenerationConfig))


def check_known_fields(data: Mapping[str, Any]) -> None:
    for name in data:
        if name not in FIELD_NAMES:
            raise ValidationError(
                str(name), f"unknown generation config field; known fields: {', '.join(sorted(FIELD_NAMES))}"
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(name: str, value: object, lo: int, hi: int | None = None) -> None:
    if not _is_int(value):
        raise ValidationError(name, f"must be an integer, got {value!r}")
    assert isinstance(value, int)
    if value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValidationError(name, f"must be {bound}, got {value}")


def _float(name: str, value: object) -> float:
    if not isinstance(value, float) or not math.isfinite(value):
        raise ValidationError(name, f"must be a finite number, got {value!r}")
    return value


def _bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ValidationError(name, f"must be true or false, got {value!r}")


def _int_to_float(value: object) -> object:
    """An int where a float is expected becomes a float; one too large for a float becomes
    inf, which validation then refuses by name (not an OverflowError)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return value
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _validate(c: GenerationConfig) -> None:
    _int("max_tokens", c.max_tokens, 1, MAX_TOKENS)
    if _float("temperature", c.temperature) < 0:
        raise ValidationError("temperature", f"must be >= 0 (0 = greedy), got {c.temperature}")
    if not 0 < _float("top_p", c.top_p) <= 1:
        raise ValidationError("top_p", f"must satisfy 0 < top_p <= 1, got {c.top_p}")
    _int("top_k", c.top_k, 0)
    if c.seed is not None:
        _int("seed", c.seed, 0, 2**63 - 1)
    if not isinstance(c.stop, tuple):
        raise ValidationError("stop", f"must be a string or a list of strings, got {c.stop!r}")
    if len(c.stop) > MAX_STOP_STRINGS:
        raise ValidationError("stop", f"at most {MAX_STOP_STRINGS} stop strings, got {len(c.stop)}")
    for s in c.stop:
        if not isinstance(s, str) or not s:
            raise ValidationError("stop", f"each stop string must be a non-empty string, got {s!r}")
        if not _encodable(s):
            raise ValidationError("stop", "a stop string holds a lone surrogate (not valid Unicode text)")
    if not isinstance(c.stop_token_ids, tuple) or not all(_is_int(t) and t >= 0 for t in c.stop_token_ids):
        raise ValidationError(
            "stop_token_ids", f"must be a list of token ids (integers >= 0), got {c.stop_token_ids!r}"
        )
    _bool("include_stop_str_in_output", c.include_stop_str_in_output)
    _bool("ignore_eos", c.ignore_eos)
    _int("n", c.n, 1, MAX_N)
    _bool("logprobs", c.logprobs)
    _int("top_logprobs", c.top_logprobs, 0, MAX_TOP_LOGPROBS)
    if c.top_logprobs and not c.logprobs:
        raise ValidationError("top_logprobs", "needs logprobs=True")
    _bool("skip_special_tokens", c.skip_special_tokens)


__all__ = ["FIELD_NAMES", "MAX_N", "MAX_TOKENS", "MAX_TOP_LOGPROBS", "GenerationConfig", "check_known_fields"]
