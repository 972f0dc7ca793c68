"""Batch item results -> OpenAI batch-file output lines.  Pure.

A finished item gives ``{"id", "custom_id", "response": {"status_code": 200, "request_id",
"body": <chat.completion or text_completion>}, "error": null}``; a cancelled, failed, expired
or never-submitted one gives ``"response": null`` and ``"error": {"code", "message"}`` (a
cancelled item's partial text stays readable with ``tokenrelay tail``).
"""

from __future__ import annotations

import time
from typing import Any

from consumer.batch import BatchItemResult
from consumer.result import Result


def output_line(item: BatchItemResult, model: str | None = None) -> dict[str, Any]:
    line: dict[str, Any] = {"id": f"batch_req_{item.request_id or item.index}", "custom_id": item.custom_id}
    if item.status == "finished" and item.result is not None:
        body = completion_body(item.request_id or "", item.result, item.chat, model)
        line.update(response={"status_code": 200, "request_id": item.request_id, "body": body}, error=None)
    else:
        error = item.error or {"type": item.status, "message": f"the request ended as {item.status}"}
        line.update(response=None, error={"code": error.get("type", item.status), "message": error.get("message")})
    return line


def completion_body(request_id: str, result: Result, chat: bool, model: str | None) -> dict[str, Any]:
    choices = [_choice(i, text, result.finish_reasons[i], chat) for i, text in enumerate(result.texts)]
    usage = result.usage
    return {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{request_id}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model or "",
        "choices": choices,
        "usage": None
        if usage is None
        else {
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens,
        },
    }


def _choice(index: int, text: str, finish_reason: str | None, chat: bool) -> dict[str, Any]:
    if chat:
        message = {"role": "assistant", "content": text}
        return {"index": index, "message": message, "finish_reason": finish_reason, "logprobs": None}
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": None}
