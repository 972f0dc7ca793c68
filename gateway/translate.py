"""OpenAI request bodies -> what ``Producer.submit`` takes.  Pure: no I/O.

Every field is either mapped onto ``GenerationConfig`` or refused with a 400 naming it; a
value that would need behaviour tokenrelay does not have (``presence_penalty`` != 0, tools,
``echo``, ...) is never silently dropped.  Config errors name the field in the API's own
spelling (``max_completion_tokens``, not the config's ``max_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.errors import ApiError
from gateway.schema import ChatCompletionRequest, CommonRequest, CompletionRequest
from schemas.config import GenerationConfig
from schemas.errors import ValidationError

Api = Literal["completion", "chat"]
COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's (and vLLM's) default for /v1/completions
PASS_THROUGH = ("temperature", "top_p", "n", "stop", "seed", "top_k", "ignore_eos", "stop_token_ids",
                "include_stop_str_in_output", "skip_special_tokens")  # fmt: skip


@dataclass(frozen=True)
class Submission:
    """One create request, checked and translated."""

    api: Api
    model: str | None
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    stream: bool = False
    include_usage: bool = False
    background: bool = False


def refuse(name: str, why: str) -> ApiError:
    return ApiError(400, f"{name}: {why}", param=name, code="unsupported_parameter")


def check_common(body: CommonRequest) -> None:
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(body, name) not in (None, 0, 0.0):
            raise refuse(name, "not supported (only 0)")
    if body.logit_bias:
        raise refuse("logit_bias", "not supported")
    if body.stream_options is not None and not body.stream:
        raise refuse("stream_options", "only allowed with stream: true")


def common_config(body: CommonRequest) -> dict[str, Any]:
    return {name: getattr(body, name) for name in PASS_THROUGH if getattr(body, name) is not None}


def validate(config: dict[str, Any], spelling: dict[str, str]) -> dict[str, Any]:
    """GenerationConfig's checks, with the error naming the API's field."""
    try:
        GenerationConfig(**config)
    except ValidationError as exc:
        name = spelling.get(exc.field, exc.field)
        raise ApiError(400, f"{name}: {exc.message}", param=name) from None
    return config


def completion(body: CompletionRequest) -> Submission:
    check_common(body)
    if body.echo:
        raise refuse("echo", "not supported")
    if body.suffix is not None:
        raise refuse("suffix", "not supported")
    if body.best_of is not None and body.best_of != (body.n or 1):
        raise refuse("best_of", "only equal to n is supported")
    config = common_config(body)
    config["max_tokens"] = body.max_tokens if body.max_tokens is not None else COMPLETION_DEFAULT_MAX_TOKENS
    if body.logprobs is not None:
        config["logprobs"], config["top_logprobs"] = True, body.logprobs
    spelling = {"top_logprobs": "logprobs"}
    return Submission(
        "completion", body.model, prompt=one_prompt(body.prompt), config=validate(config, spelling),
        stream=bool(body.stream), include_usage=include_usage(body), background=bool(body.background),
    )  # fmt: skip


def one_prompt(prompt: object) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        return prompt[0]
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        raise refuse("prompt", "one prompt per request (POST /v1/batches takes many)")
    raise refuse("prompt", "token id prompts are not supported; send text")


CHAT_UNSUPPORTED = ("tools", "functions", "function_call", "audio", "prediction", "reasoning_effort")


def check_chat(body: ChatCompletionRequest) -> None:
    check_common(body)
    for name in CHAT_UNSUPPORTED:
        if getattr(body, name):
            raise refuse(name, "not supported")
    if body.tool_choice not in (None, "none"):
        raise refuse("tool_choice", "not supported (tools are not supported)")
    if body.response_format and body.response_format.get("type") != "text":
        raise refuse("response_format", "only {'type': 'text'} is supported")
    if body.modalities and body.modalities != ["text"]:
        raise refuse("modalities", "only ['text'] is supported")
    if body.store:
        raise refuse("store", "not supported (requests live in Redis until their TTL)")
    if body.max_tokens is not None and body.max_completion_tokens is not None:
        raise refuse("max_tokens", "give max_tokens or max_completion_tokens, not both")


def chat(body: ChatCompletionRequest) -> Submission:
    check_chat(body)
    config = common_config(body)
    limit = body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    if limit is not None:
        config["max_tokens"] = limit
    if body.logprobs is not None:
        config["logprobs"] = body.logprobs
    if body.top_logprobs is not None:
        config["top_logprobs"] = body.top_logprobs
    spelling = {"max_tokens": "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"}
    return Submission(
        "chat", body.model, messages=chat_messages(body), config=validate(config, spelling),
        stream=bool(body.stream), include_usage=include_usage(body), background=bool(body.background),
    )  # fmt: skip


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, str]]:
    if not body.messages:
        raise refuse("messages", "at least one message is needed")
    out = []
    for i, message in enumerate(body.messages):
        if message.name is not None:
            raise refuse(f"messages.{i}.name", "not supported")
        content = message.content
        text = content if isinstance(content, str) else "".join(p.text for p in content or [])
        # The chat templates know system, user and assistant; OpenAI's "developer" is its system.
        out.append({"role": "system" if message.role == "developer" else message.role, "content": text})
    return out


def include_usage(body: CommonRequest) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)
