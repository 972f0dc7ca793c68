"""A small SSE reader for tests (httpx streaming): events as (id, data) pairs, comments kept."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass
class Event:
    id: str | None
    data: str
    comment: bool = False

    def json(self) -> Any:
        return json.loads(self.data)


def events(response: httpx.Response) -> Iterator[Event]:
    """Events of an open streaming response, comments (keep-alives) included."""
    event_id: str | None = None
    data: list[str] = []
    for line in response.iter_lines():
        if line.startswith(":"):
            yield Event(None, line[1:].strip(), comment=True)
        elif line.startswith("id:"):
            event_id = line[3:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].strip())
        elif line == "" and data:
            yield Event(event_id, "\n".join(data))
            event_id, data = None, []


def read_all(client: httpx.Client, method: str, url: str, **kwargs: Any) -> tuple[httpx.Response, list[Event]]:
    with client.stream(method, url, **kwargs) as response:
        if response.status_code != 200:
            response.read()
            return response, []
        return response, [e for e in events(response) if not e.comment]
