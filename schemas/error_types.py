"""The closed set of ``error.type`` values a worker writes on a failed request's records.

A reader in any language can switch on these; the gateway maps each to an HTTP status and an
OpenAI error type in one place (gateway/errors.py).  A worker never writes anything else:
an unexpected exception is reported as ``internal`` (its traceback goes to the worker's log).
"""

from __future__ import annotations

ERROR_TYPES: dict[str, str] = {
    "invalid_request": "the task message or its config is malformed (bad field, unknown payload version)",
    "unknown_model": "no worker that received the request serves the model it asked for",
    "no_chat_template": "messages were sent to a model that has no chat template",
    "tokenizer_error": "the tokenizer refused the prompt",
    "empty_prompt": "the prompt encodes to no tokens",
    "prompt_too_long": "prompt plus max_tokens do not fit in the model's context",
    "engine_full": "the worker's engine queue was full",
    "model_error": "the model produced non-finite logits (NaN or inf) for this request",
    "too_many_attempts": "the request's worker died too many times (a poison request); given up",
    "expired": "the request waited longer than its TTL",
    "internal": "an unexpected error in the worker (see the worker's log)",
}


def check_error_type(value: str) -> str:
    """The wire type for ``value``: itself if known, else ``internal``."""
    return value if value in ERROR_TYPES else "internal"
