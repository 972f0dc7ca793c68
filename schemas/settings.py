"""Configuration: an explicit argument wins, else the environment, else a default.

This is the one module that reads tokenrelay's environment variables.  Every accessor
validates what it reads and raises :class:`schemas.ValidationError` naming the culprit: the
variable (``TOKENRELAY_TTL_S``) when the value came from the environment, the argument
(``ttl_s``) when a caller passed it.  An empty variable counts as unset, so that
``TOKENRELAY_BROKER_URL=`` (as docker-compose writes an unset ``${VAR:-}``) means the default.

:data:`ENVIRONMENT` lists every variable once; ``tokenrelay --help`` and the README's
"Configuration" table are written from it, and :func:`validate_environment` checks them all
(the command line does so before any command runs, so a typo exits 2 with one line instead
of a traceback deep inside a worker).

Pure standard library: the client packages import this, so it never imports torch, Celery or
redis-py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from schemas.cluster_url import CLUSTER_SCHEMES, is_cluster_url, parse_cluster_url
from schemas.errors import ValidationError
from schemas.sentinel_url import SENTINEL_SCHEME, is_sentinel_url, parse_sentinel_url

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_TTL_S = 3600
DEFAULT_VISIBILITY_TIMEOUT_S = 300  # leases keep running requests; see broker/app.py
DEFAULT_LEASE_S = 5.0
DEFAULT_GRACE_S = 30.0
DEFAULT_MAX_ATTEMPTS = 3
# Every open stream read (an SSE client of the gateway, an async reader's stream) holds one
# connection in XREAD BLOCK; redis-py 8 caps a pool at 100 unless told otherwise.
DEFAULT_REDIS_MAX_CONNECTIONS = 4096

_URL_SCHEMES = ("redis://", "rediss://", "unix://")
_REDIS_SCHEMES = (*_URL_SCHEMES, *CLUSTER_SCHEMES)  # streams may live on a Redis Cluster
_BROKER_SCHEMES = (*_URL_SCHEMES, "amqp://", "amqps://", "pyamqp://", SENTINEL_SCHEME, "memory://")
# Spelled out instead of asking torch: this module must stay importable without it.
_DEVICE = re.compile(r"^(cpu|mps|(cuda|xpu)(:\d+)?)$")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

N = TypeVar("N", int, float)


def _env(name: str) -> str | None:
    """The variable's value without surrounding blanks; unset or empty is None."""
    value = os.environ.get(name, "").strip()
    return value or None


def _pick(explicit: object, argument: str, env: str) -> tuple[object, str] | None:
    """The raw value and the name to blame for it: the argument if given, else the variable."""
    if explicit is not None:
        return explicit, argument
    raw = _env(env)
    return None if raw is None else (raw, env)


def _choice(explicit: str | None, argument: str, env: str, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (the first is the default), or an error naming the argument or variable."""
    picked = _pick(explicit, argument, env)
    if picked is None:
        return choices[0]
    value, source = str(picked[0]), picked[1]
    if value not in choices:
        raise ValidationError(source, f"must be one of {', '.join(choices)}, got {value!r}")
    return value


def _number(raw: object, field: str, kind: type[N], minimum: N, unit: str) -> N:
    """``raw`` as an int or float no smaller than ``minimum``, or an error naming ``field``."""
    noun = "a whole number" if kind is int else "a number"
    try:
        if isinstance(raw, bool) or (kind is int and isinstance(raw, float)):
            raise TypeError
        value = kind(raw) if isinstance(raw, (int, float)) else kind(str(raw))
    except (TypeError, ValueError):
        raise ValidationError(field, f"must be {noun} of {unit}, got {raw!r}") from None
    if value != value or value in (float("inf"), float("-inf")):  # NaN / inf parse as floats
        raise ValidationError(field, f"must be a finite number of {unit}, got {raw!r}")
    if value < minimum:
        raise ValidationError(field, f"must be >= {minimum} {unit}, got {raw!r}")
    return value


def _setting(explicit: N | None, argument: str, env: str, default: N, kind: type[N], minimum: N, unit: str) -> N:
    picked = _pick(explicit, argument, env)
    if picked is None:
        return default
    return _number(picked[0], picked[1], kind, minimum, unit)


def _flag(env: str, default: bool) -> bool:
    raw = _env(env)
    if raw is None:
        return default
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValidationError(env, f"must be one of 1/0, true/false, yes/no, on/off, got {raw!r}")


# --- where things are -------------------------------------------------------------------


def _url(explicit: str | None, argument: str, env: str, schemes: tuple[str, ...]) -> str | None:
    picked = _pick(explicit or None, argument, env)
    if picked is None:
        return None
    url, field = str(picked[0]), picked[1]
    if not url.startswith(schemes):
        raise ValidationError(field, f"must start with one of {', '.join(schemes)}, got {url!r}")
    return url


def redis_url(explicit: str | None = None) -> str:
    """Where streams and cancel keys live: argument, ``TOKENRELAY_REDIS_URL``, or localhost.
    ``redis+cluster://host:port[,host:port...]`` (``rediss+cluster://``) is a Redis Cluster."""
    url = _url(explicit, "redis_url", "TOKENRELAY_REDIS_URL", _REDIS_SCHEMES)
    if url is None:
        return DEFAULT_REDIS_URL
    if is_cluster_url(url):
        parse_cluster_url(url, "redis_url" if explicit else "TOKENRELAY_REDIS_URL")  # seeds, ports, db 0
    return url


def broker_url(explicit: str | None = None, redis: str | None = None) -> str:
    """Celery's broker: argument, ``TOKENRELAY_BROKER_URL``, or the Redis URL.  Never a Redis
    Cluster: kombu has no cluster transport (a queue is one list on one node anyway)."""
    url = _given_broker_url(explicit)
    if url is not None:
        return url
    streams = redis_url(redis)
    if is_cluster_url(streams):
        # Named after the variable to set (callers pass the resolved Redis URL along, so
        # whether it came from an argument is not known here).
        raise ValidationError(
            "TOKENRELAY_BROKER_URL", "a broker URL (amqp:// or a standalone redis://; or the broker_url argument) "
            "is needed: the Redis URL is a Redis Cluster, which cannot be the Celery broker",
        )  # fmt: skip
    return streams


def _given_broker_url(explicit: str | None = None) -> str | None:
    """The broker URL given as argument or variable, checked; None when neither is."""
    picked = _pick(explicit or None, "broker_url", "TOKENRELAY_BROKER_URL")
    if picked is not None and is_cluster_url(str(picked[0])):
        raise ValidationError(
            picked[1], "the Celery broker cannot be a Redis Cluster (kombu has no cluster transport): give an "
            "amqp:// (RabbitMQ) or a standalone redis:// URL; the cluster goes in TOKENRELAY_REDIS_URL",
        )  # fmt: skip
    url = _url(explicit, "broker_url", "TOKENRELAY_BROKER_URL", _BROKER_SCHEMES)
    if url is not None and is_sentinel_url(url):
        parse_sentinel_url(url, picked[1] if picked else "broker_url")  # hosts, ports, the master's name
    return url


def model_name(explicit: str | None = None) -> str:
    """The model a worker serves: argument, ``TOKENRELAY_MODEL``, or SmolLM2-135M-Instruct."""
    return explicit or _env("TOKENRELAY_MODEL") or DEFAULT_MODEL


def cache_dir() -> Path:
    """Converted models: ``TOKENRELAY_CACHE_DIR``, else ``$XDG_CACHE_HOME/tokenrelay``, else
    ``~/.cache/tokenrelay``."""
    root = _env("TOKENRELAY_CACHE_DIR")
    if root is None:
        return Path(_env("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")) / "tokenrelay"
    path = Path(os.path.expanduser(root))
    if path.exists() and not path.is_dir():
        raise ValidationError("TOKENRELAY_CACHE_DIR", f"must be a folder, but {root!r} is a file")
    return path


# --- lifetimes and timeouts -------------------------------------------------------------


def ttl_s(explicit: int | None = None) -> int:
    """Lifetime of a request's keys after its last write: ``TOKENRELAY_TTL_S``, default 1 h."""
    return _setting(explicit, "ttl_s", "TOKENRELAY_TTL_S", DEFAULT_TTL_S, int, 1, "seconds")


def visibility_timeout_s() -> int:
    """The Redis broker redelivers an unacknowledged task after this long:
    ``TOKENRELAY_VISIBILITY_TIMEOUT_S``, default 5 min."""
    return _setting(None, "", "TOKENRELAY_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S, int, 1, "seconds")


def lease_s(explicit: float | None = None) -> float:
    """A worker's hold on a request; another worker takes it over this long after the holder
    stopped renewing it: ``TOKENRELAY_LEASE_S``, default 5 s."""
    return _setting(explicit, "lease_s", "TOKENRELAY_LEASE_S", DEFAULT_LEASE_S, float, 0.1, "seconds")


def grace_s(explicit: float | None = None) -> float:
    """Warm shutdown: how long a worker finishes what it holds before handing it off:
    ``TOKENRELAY_GRACE_S``, default 30 s."""
    return _setting(explicit, "grace_s", "TOKENRELAY_GRACE_S", DEFAULT_GRACE_S, float, 0.0, "seconds")


def max_attempts(explicit: int | None = None) -> int:
    """A request claimed by more workers than this ends with an error instead of taking down
    worker after worker: ``TOKENRELAY_MAX_ATTEMPTS``, default 3."""
    return _setting(explicit, "max_attempts", "TOKENRELAY_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS, int, 1, "attempts")


def redis_max_connections(explicit: int | None = None) -> int:
    """Connections one client (reader, producer, gateway) may open to Redis; each stream being
    read holds one while it waits: ``TOKENRELAY_REDIS_MAX_CONNECTIONS``, default 4096 (Redis's
    own ``maxclients`` defaults to 10,000)."""
    return _setting(
        explicit, "max_connections", "TOKENRELAY_REDIS_MAX_CONNECTIONS", DEFAULT_REDIS_MAX_CONNECTIONS, int, 1,
        "connections",
    )  # fmt: skip


# --- the worker's hardware --------------------------------------------------------------


def device() -> str | None:
    """``TOKENRELAY_DEVICE`` (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``xpu[:N]``), or None to
    pick CUDA when present, else the CPU."""
    raw = _env("TOKENRELAY_DEVICE")
    if raw is not None and not _DEVICE.match(raw):
        raise ValidationError("TOKENRELAY_DEVICE", f"must be cpu, cuda, cuda:N, mps or xpu, got {raw!r}")
    return raw


DTYPES = ("auto", "float32", "bfloat16", "float16")


def dtype(explicit: str | None = None) -> str:
    """The builtin engine's weight and activation dtype: argument, ``TOKENRELAY_DTYPE``, else
    ``auto`` (bf16 on a GPU, fp16 where it lacks bf16; fp32 on a CPU, whose greedy tokens equal
    transformers' ``generate``).  ``bfloat16`` on a CPU with bf16 units (AVX512-BF16, AMX) runs
    decode steps ~1.4x faster (README, benchmarks) with slightly different tokens."""
    return _choice(explicit, "dtype", "TOKENRELAY_DTYPE", DTYPES)


def torch_threads(explicit: int | None = None) -> int | None:
    """Torch intra-op threads of a worker: argument, ``TOKENRELAY_TORCH_THREADS``, or None for
    torch's own choice (all cores).  0 also means torch's choice."""
    value = _setting(explicit, "threads", "TOKENRELAY_TORCH_THREADS", 0, int, 0, "threads")
    return value or None


def cpu_prepack() -> bool:
    """``TOKENRELAY_CPU_PREPACK``: the builtin engine reorders its linear layers' weights for
    oneDNN on CPU (workers/engine/cpu_linear.py; faster decode steps).  On by default."""
    return _flag("TOKENRELAY_CPU_PREPACK", True)


def lean_forward() -> bool:
    """``TOKENRELAY_LEAN_FORWARD``: the builtin engine runs Llama-like models through its own
    forward pass (workers/engine/llama_forward.py: the same kernels, less Python); ``0`` runs
    transformers' forward.  On by default."""
    return _flag("TOKENRELAY_LEAN_FORWARD", True)


ENGINES = ("builtin", "vllm")


def engine(explicit: str | None = None) -> str:
    """The worker's engine core: argument, ``TOKENRELAY_ENGINE``, else ``builtin``."""
    return _choice(explicit, "engine", "TOKENRELAY_ENGINE", ENGINES)


def engine_args(explicit: list[str] | None = None) -> dict[str, object]:
    """Extra arguments for the vLLM engine (vLLM's ``EngineArgs``), ``KEY=VALUE`` each, from
    ``--engine-arg`` or ``TOKENRELAY_ENGINE_ARGS`` (space-separated).  Values are JSON where
    they parse as JSON (``enforce_eager=true``, ``max_model_len=4096``), else strings."""
    import json

    source = "engine_arg"
    items = explicit
    if items is None:
        raw = _env("TOKENRELAY_ENGINE_ARGS")
        items, source = (raw.split() if raw else []), "TOKENRELAY_ENGINE_ARGS"
    out: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key.isidentifier():
            raise ValidationError(source, f"expected KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def task_events() -> bool:
    """``TOKENRELAY_TASK_EVENTS``: workers send Celery task events (what ``celery worker -E``
    does), so flower and ``celery events`` show tasks.  Off by default: one more broker
    message per task state."""
    return _flag("TOKENRELAY_TASK_EVENTS", False)


def metrics_port(explicit: int | None = None) -> int | None:
    """``TOKENRELAY_METRICS_PORT``: a worker serves Prometheus metrics on this port (0 picks a
    free one); unset, it serves none."""
    picked = _pick(explicit, "metrics_port", "TOKENRELAY_METRICS_PORT")
    return None if picked is None else _number(picked[0], picked[1], int, 0, "port")


# --- the gateway ------------------------------------------------------------------------


def api_keys() -> list[str]:
    """Bearer tokens the gateway accepts: ``TOKENRELAY_API_KEYS``, comma-separated.  Empty list:
    no key needed.  A variable that is set but names no key is an error, never an open door."""
    if "TOKENRELAY_API_KEYS" not in os.environ:
        return []
    keys = [key.strip() for key in os.environ["TOKENRELAY_API_KEYS"].split(",")]
    if not any(keys):
        raise ValidationError("TOKENRELAY_API_KEYS", "is set but lists no key (unset it to require none)")
    for key in keys:
        if not key or any(ch.isspace() for ch in key):
            raise ValidationError("TOKENRELAY_API_KEYS", "must be comma-separated keys without blanks or empty items")
    return keys


# --- the list of them all ---------------------------------------------------------------


@dataclass(frozen=True)
class EnvVar:
    """One environment variable, for ``--help``, the README and :func:`validate_environment`."""

    name: str
    default: str
    meaning: str
    check: Callable[[], object]


ENVIRONMENT: tuple[EnvVar, ...] = (
    EnvVar("TOKENRELAY_REDIS_URL", DEFAULT_REDIS_URL, "streams and cancel keys", redis_url),
    # Only the variable itself: a cluster Redis URL with no broker is refused where a broker is
    # needed (producer, worker, gateway), not by commands that only read (tail, cancel).
    EnvVar(
        "TOKENRELAY_BROKER_URL",
        "the Redis URL",
        "Celery broker (redis://, rediss://, amqp://, sentinel://...?master_name=)",
        _given_broker_url,
    ),
    EnvVar("TOKENRELAY_MODEL", DEFAULT_MODEL, "model a worker serves", model_name),
    EnvVar("TOKENRELAY_TTL_S", str(DEFAULT_TTL_S), "key lifetime after the last write, seconds", ttl_s),
    EnvVar(
        "TOKENRELAY_VISIBILITY_TIMEOUT_S",
        str(DEFAULT_VISIBILITY_TIMEOUT_S),
        "Redis broker redelivers an unacked task after, seconds",
        visibility_timeout_s,
    ),
    EnvVar("TOKENRELAY_LEASE_S", f"{DEFAULT_LEASE_S:g}", "dead worker's requests taken over after, seconds", lease_s),
    EnvVar("TOKENRELAY_GRACE_S", f"{DEFAULT_GRACE_S:g}", "warm shutdown: finish held requests for, seconds", grace_s),
    EnvVar("TOKENRELAY_MAX_ATTEMPTS", str(DEFAULT_MAX_ATTEMPTS), "workers that may claim one request", max_attempts),
    EnvVar(
        "TOKENRELAY_REDIS_MAX_CONNECTIONS",
        str(DEFAULT_REDIS_MAX_CONNECTIONS),
        "Redis connections per client (one per stream being read)",
        redis_max_connections,
    ),
    EnvVar("TOKENRELAY_DEVICE", "cuda if present, else cpu", "cpu, cuda, cuda:N, mps or xpu", device),
    EnvVar("TOKENRELAY_TORCH_THREADS", "all cores", "torch threads of a worker", torch_threads),
    EnvVar("TOKENRELAY_CPU_PREPACK", "1", "builtin engine prepacks weights for oneDNN on CPU", cpu_prepack),
    EnvVar("TOKENRELAY_LEAN_FORWARD", "1", "builtin engine's own forward for Llama-like models", lean_forward),
    EnvVar("TOKENRELAY_DTYPE", "auto", "builtin engine dtype: auto, float32, bfloat16 or float16", dtype),
    EnvVar("TOKENRELAY_ENGINE", "builtin", "worker engine core: builtin or vllm", engine),
    EnvVar("TOKENRELAY_ENGINE_ARGS", "none", "vLLM EngineArgs as KEY=VALUE, space-separated", engine_args),
    EnvVar("TOKENRELAY_CACHE_DIR", "~/.cache/tokenrelay", "converted models", cache_dir),
    EnvVar("TOKENRELAY_TASK_EVENTS", "0", "workers send Celery task events (flower)", task_events),
    EnvVar("TOKENRELAY_METRICS_PORT", "none: no metrics server", "worker's Prometheus metrics port", metrics_port),
    EnvVar("TOKENRELAY_API_KEYS", "none: no key needed", "gateway bearer tokens, comma-separated", api_keys),
)


def validate_environment() -> None:
    """Read every variable once; the first bad one raises a ValidationError naming it."""
    for var in ENVIRONMENT:
        var.check()


def describe_environment() -> str:
    """The variables as an aligned text table (``tokenrelay --help``)."""
    width = max(len(var.name) for var in ENVIRONMENT)
    return "\n".join(f"  {var.name:<{width}}  {var.meaning} (default: {var.default})" for var in ENVIRONMENT)
