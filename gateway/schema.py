"""The OpenAI request and response shapes the gateway accepts and returns (pydantic models).

They exist for two reasons: FastAPI validates request bodies against them (a wrong type is a
400 naming the field, see gateway/errors.py), and they make the OpenAPI document precise
enough for schemathesis to check every response against it.  Request models forbid unknown
fields: a field tokenrelay cannot honour is refused by name, never silently ignored.  Fields
OpenAI defines but tokenrelay cannot honour are declared (so the OpenAPI document lists them)
and refused by value in gateway/translate.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Open(BaseModel):
    """Response models: extra fields are allowed so that newer gateways may add some."""

    model_config = ConfigDict(extra="allow")


class StreamOptions(Strict):
    include_usage: bool | None = None


class CommonRequest(Strict):
    """Fields both create endpoints share (OpenAI's spelling, plus vLLM's extensions)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    user: str | None = Field(None, description="accepted for compatibility; only logged")
    presence_penalty: float | None = Field(None, description="only 0 is supported")
    frequency_penalty: float | None = Field(None, description="only 0 is supported")
    logit_bias: dict[str, float] | None = Field(None, description="only an empty map is supported")
    # vLLM-style extensions
    top_k: int | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool | None = None
    skip_special_tokens: bool | None = None
    # tokenrelay
    background: bool | None = Field(False, description="answer 202 with the request id at once")


class CompletionRequest(CommonRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(None, description="how many alternatives per token (0-20)")
    echo: bool | None = Field(None, description="only false is supported")
    suffix: str | None = Field(None, description="not supported")
    best_of: int | None = Field(None, description="only equal to n is supported")


class TextPart(Strict):
    type: Literal["text"]
    text: str


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, description="not supported")


class ChatCompletionRequest(CommonRequest):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    # Declared so the OpenAPI document names them; any value that asks for behaviour is a 400.
    tools: list[Any] | None = None
    tool_choice: Any | None = None
    functions: list[Any] | None = None
    function_call: Any | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any | None = None
    prediction: Any | None = None
    reasoning_effort: str | None = None
    store: bool | None = None
    metadata: dict[str, str] | None = None
    service_tier: str | None = None


# --- responses ----------------------------------------------------------------------------


class ErrorObject(Open):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(Open):
    error: ErrorObject


class Usage(Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class CompletionLogprobs(Open):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float]] | None = None
    text_offset: list[int]


class CompletionChoice(Open):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class CompletionResponse(Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatTopLogprob(Open):
    token: str
    logprob: float | None
    bytes: list[int] | None = None


class ChatTokenLogprob(ChatTopLogprob):
    top_logprobs: list[ChatTopLogprob]


class ChatLogprobs(Open):
    content: list[ChatTokenLogprob] | None


class ChatMessageOut(Open):
    role: Literal["assistant"]
    content: str | None


class ChatChoice(Open):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None


class ChatCompletionResponse(Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage | None = None


class BackgroundResponse(Open):
    id: str
    object: Literal["tokenrelay.request"]
    status: str


class RequestChoice(Open):
    index: int
    text: str
    finish_reason: str | None


class RequestStatus(Open):
    id: str
    object: Literal["tokenrelay.request"]
    status: Literal["queued", "running", "finished", "cancelled", "failed"]
    model: str | None
    choices: list[RequestChoice]
    usage: dict[str, Any] | None = None
    error: ErrorObject | None = None
    last_event_id: str | None = None


class ModelCard(Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(Open):
    object: Literal["list"]
    data: list[ModelCard]


class Health(Open):
    status: str
    checks: dict[str, Any] = {}
