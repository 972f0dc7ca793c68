"""OpenAI batch-file input lines -> `submit_batch` items.  Pure.

A line is ``{"custom_id", "method": "POST", "url": "/v1/chat/completions" | "/v1/completions",
"body": {...}}``; the body uses OpenAI's request fields plus tokenrelay's extensions
(``top_k``, ``ignore_eos``, ``stop_token_ids``, ``include_stop_str_in_output``).  A field that
cannot be honoured is a ``ValidationError`` naming it (``line 3: body.logit_bias``), never
silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from schemas.errors import ValidationError

CHAT_URL = "/v1/chat/completions"
COMPLETIONS_URL = "/v1/completions"
_SAME = ("temperature", "top_p", "top_k", "seed", "n", "ignore_eos", "stop_token_ids", "include_stop_str_in_output")
_IGNORED = ("user", "stream")  # who asked; a batch never streams (checked below)


def parse_jsonl(lines: Iterable[str]) -> list[dict[str, Any]]:
    """Every non-blank line as an item; errors name the line (1-based)."""
    items = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            items.append(parse_line(json.loads(line)))
        except json.JSONDecodeError as exc:
            raise ValidationError(f"line {number}", f"not JSON: {exc}") from None
        except ValidationError as exc:
            raise ValidationError(f"line {number}: {exc.field}", exc.message) from None
    return items


def parse_line(line: object) -> dict[str, Any]:
    if not isinstance(line, Mapping):
        raise ValidationError("line", "must be a JSON object")
    url, body = line.get("url", CHAT_URL), line.get("body")
    if line.get("method", "POST") != "POST":
        raise ValidationError("method", "must be POST")
    if url not in (CHAT_URL, COMPLETIONS_URL):
        raise ValidationError("url", f"must be {CHAT_URL} or {COMPLETIONS_URL}, got {url!r}")
    if not isinstance(body, Mapping):
        raise ValidationError("body", "must be a JSON object")
    item = body_to_item(body, chat=url == CHAT_URL)
    if line.get("custom_id") is not None:
        item["custom_id"] = line["custom_id"]
    return item


def body_to_item(body: Mapping[str, Any], chat: bool) -> dict[str, Any]:
    """An OpenAI request body as a batch item (prompt or messages, model, config fields)."""
    rest = dict(body)
    item: dict[str, Any] = {"messages": rest.pop("messages", None)} if chat else {"prompt": rest.pop("prompt", None)}
    if body.get("stream"):
        raise ValidationError("body.stream", "a batch item cannot stream")
    for name in _IGNORED:
        rest.pop(name, None)
    if "model" in rest:
        item["model"] = rest.pop("model")
    item.update(_config(rest, chat))
    if rest:
        raise ValidationError(f"body.{next(iter(rest))}", "not supported by tokenrelay")
    return item


def _config(rest: dict[str, Any], chat: bool) -> dict[str, Any]:
    """Pops the config fields it understands out of ``rest``."""
    config = {name: rest.pop(name) for name in _SAME if name in rest}
    for name in ("max_completion_tokens", "max_tokens"):
        if name in rest:
            config["max_tokens"] = rest.pop(name)
    if "stop" in rest and rest["stop"] is not None:
        config["stop"] = rest.pop("stop")
    rest.pop("stop", None)
    if chat:
        if "logprobs" in rest:
            config["logprobs"] = bool(rest.pop("logprobs"))
        if "top_logprobs" in rest:
            config["top_logprobs"] = rest.pop("top_logprobs")
    elif rest.get("logprobs") is not None:
        k = rest.pop("logprobs")  # completions: an int, how many alternatives
        config.update(logprobs=True, top_logprobs=k)
    return config
