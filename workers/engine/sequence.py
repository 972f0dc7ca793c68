"""What the engine core knows of a request: its prompt, sampling parameters and token ids.

A `Request` has ``n`` `Choice` objects; each unfinished choice of a running request is one
row of the decode batch.  Text, finish reasons, seq and usage are the output processor's
(output.py); the core only learns *that* a choice finished, to free its row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.config import GenerationConfig


@dataclass
class Choice:
    index: int
    generated: list[int] = field(default_factory=list)  # token ids so far (resumed ones included)
    finished: bool = False

    @property
    def last_token(self) -> int:
        return self.generated[-1]


@dataclass
class Request:
    request_id: str
    prompt_ids: list[int]
    config: GenerationConfig
    seed: int
    choices: list[Choice]

    @property
    def finished(self) -> bool:
        return all(c.finished for c in self.choices)

    def unfinished(self) -> list[Choice]:
        return [c for c in self.choices if not c.finished]
