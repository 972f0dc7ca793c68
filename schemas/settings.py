"""Configuration: an explicit argument wins, else the environment, else a default."""

from __future__ import annotations

import os

from schemas.errors import ValidationError

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_TTL_S = 3600

_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_BROKER_SCHEMES = (*_URL_SCHEMES, "amqp://", "amqps://", "pyamqp://", "memory://")


def redis_url(explicit: str | None = None) -> str:
    """Where streams and cancel keys live: argument, ``TOKENRELAY_REDIS_URL``, or localhost."""
    url = explicit or os.environ.get("TOKENRELAY_REDIS_URL") or DEFAULT_REDIS_URL
    if not url.startswith(_URL_SCHEMES):
        raise ValidationError("redis_url", f"must start with one of {', '.join(_URL_SCHEMES)}, got {url!r}")
    return url


def broker_url(explicit: str | None = None, redis: str | None = None) -> str:
    """Celery's broker: argument, ``TOKENRELAY_BROKER_URL``, or the Redis URL."""
    url = explicit or os.environ.get("TOKENRELAY_BROKER_URL") or redis_url(redis)
    if not url.startswith(_BROKER_SCHEMES):
        raise ValidationError("broker_url", f"must start with one of {', '.join(_BROKER_SCHEMES)}, got {url!r}")
    return url


def model_name(explicit: str | None = None) -> str:
    """The model a worker serves: argument, ``TOKENRELAY_MODEL``, or SmolLM2-135M-Instruct."""
    return explicit or os.environ.get("TOKENRELAY_MODEL") or DEFAULT_MODEL


def ttl_s(explicit: int | None = None) -> int:
    """Lifetime of a request's keys after its last write: ``TOKENRELAY_TTL_S``, default 1 h."""
    raw: object = explicit if explicit is not None else os.environ.get("TOKENRELAY_TTL_S", DEFAULT_TTL_S)
    try:
        value = int(raw)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        raise ValidationError("ttl_s", f"must be an integer number of seconds, got {raw!r}") from None
    if value < 1:
        raise ValidationError("ttl_s", f"must be >= 1 second, got {value}")
    return value
