"""Worker heartbeats: what each live worker serves and how busy it is.

Every worker writes, every `HEARTBEAT_INTERVAL_S`, one hash ``keys.worker_key(id)`` (TTL
`HEARTBEAT_TTL_S`) and its score in the sorted set ``keys.WORKERS_KEY`` (worker id -> unix ms
of the beat).  A worker is live while its hash exists and its beat is younger than
`HEARTBEAT_TTL_S`; the sorted set is only an index (readers drop stale members).  The gateway's
``/readyz`` and ``/v1/models``, the dashboard and the takeover logic read it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_TTL_S = 10


@dataclass(frozen=True)
class WorkerInfo:
    worker_id: str
    model: str  # the name the worker was started with
    aliases: list[str] = field(default_factory=list)  # other names a task may use for it
    engine: str = "builtin"
    queues: list[str] = field(default_factory=list)
    capacity: int = 0  # requests it decodes at once (max_running)
    running: int = 0
    waiting: int = 0
    tokens_per_s: float = 0.0  # generated tokens/s over the last few seconds
    hostname: str = ""
    pid: int = 0
    started_at: float = 0.0  # unix s
    heartbeat_at: float = 0.0  # unix s
    draining: bool = False  # warm shutdown in progress: takes no new work

    def to_mapping(self) -> dict[str, str]:
        """Hash fields (all strings; lists and bools as JSON)."""
        return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in asdict(self).items()}

    @classmethod
    def from_mapping(cls, raw: Mapping[Any, Any]) -> WorkerInfo:
        """From HGETALL's reply (bytes or str keys).  Unknown fields are ignored: a newer
        worker may publish more."""
        d = {_text(k): _text(v) for k, v in raw.items()}
        kwargs: dict[str, Any] = {}
        for name, f in cls.__dataclass_fields__.items():
            if name not in d:
                continue
            kwargs[name] = d[name] if f.type == "str" else json.loads(d[name])
        return cls(**kwargs)

    def serves(self, model: str | None) -> bool:
        return model is None or model == self.model or model in self.aliases


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
