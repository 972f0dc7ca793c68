"""Batch items: what ``submit_batch`` accepts, checked in full before anything is enqueued.

An item is a prompt string, or a map with ``prompt`` or ``messages``, an optional
``custom_id``, an optional ``model`` and any generation config fields (they override the
batch's own config for that item).  A bad item raises ``ValidationError`` naming
``items[<i>].<field>``, and nothing of the batch is enqueued.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from schemas.config import GenerationConfig, check_known_fields
from schemas.errors import ValidationError
from schemas.job import check_messages

_ITEM_FIELDS = ("prompt", "messages", "custom_id", "model")


@dataclass(frozen=True)
class BatchItem:
    prompt: str | None
    messages: list[dict[str, str]] | None
    config: GenerationConfig
    custom_id: str | None = None
    model: str | None = None


def parse_items(items: Iterable[object], defaults: Mapping[str, Any], model: str | None) -> list[BatchItem]:
    check_known_fields(defaults)
    GenerationConfig(**defaults)  # a bad batch-level value names the field itself
    parsed = [_parse(i, item, defaults, model) for i, item in enumerate(items)]
    if not parsed:
        raise ValidationError("items", "a batch needs at least one item")
    _check_unique_custom_ids(parsed)
    return parsed


def _parse(i: int, item: object, defaults: Mapping[str, Any], model: str | None) -> BatchItem:
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, Mapping):
        raise ValidationError(f"items[{i}]", f"must be a prompt string or a map, got {type(item).__name__}")
    try:
        return _from_map(item, defaults, model)
    except ValidationError as exc:
        raise ValidationError(f"items[{i}].{exc.field}", exc.message) from None


def _from_map(item: Mapping[str, Any], defaults: Mapping[str, Any], model: str | None) -> BatchItem:
    fields = {k: v for k, v in item.items() if k not in _ITEM_FIELDS}
    check_known_fields(fields)
    prompt, messages = item.get("prompt"), item.get("messages")
    if (prompt is None) == (messages is None):
        raise ValidationError("prompt", "give exactly one of prompt or messages")
    if prompt is not None and (not isinstance(prompt, str) or not prompt):
        raise ValidationError("prompt", "must be a non-empty string")
    custom_id = item.get("custom_id")
    if custom_id is not None and not isinstance(custom_id, str):
        raise ValidationError("custom_id", f"must be a string, got {type(custom_id).__name__}")
    item_model = item.get("model", model)
    if item_model is not None and (not isinstance(item_model, str) or not item_model):
        raise ValidationError("model", "must be a non-empty string")
    return BatchItem(
        prompt=prompt,
        messages=None if messages is None else check_messages(messages),
        config=GenerationConfig(**{**defaults, **fields}),
        custom_id=custom_id,
        model=item_model,
    )


def _check_unique_custom_ids(items: list[BatchItem]) -> None:
    seen: set[str] = set()
    for i, item in enumerate(items):
        if item.custom_id is None:
            continue
        if item.custom_id in seen:
            raise ValidationError(f"items[{i}].custom_id", f"{item.custom_id!r} appears twice in the batch")
        seen.add(item.custom_id)
