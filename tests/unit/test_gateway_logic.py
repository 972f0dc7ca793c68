"""The gateway's pure logic: OpenAI bodies -> submissions, records -> chunks, error mapping."""

from __future__ import annotations

import pytest

from gateway import errors, render, translate
from gateway.schema import ChatCompletionRequest, CompletionRequest
from schemas.error_types import ERROR_TYPES
from schemas.errors import GenerationFailed, RelayConnectionError, RequestNotFound, ValidationError
from schemas.records import Record, TokenLogprob, TopLogprob, Usage


def test_completion_translation() -> None:
    sub = translate.completion(CompletionRequest(prompt=["Hi"], logprobs=2, stop="x", top_k=5, seed=1))
    assert sub.prompt == "Hi" and sub.api == "completion"
    assert sub.config == {"stop": "x", "seed": 1, "top_k": 5, "max_tokens": 16, "logprobs": True, "top_logprobs": 2}


def test_chat_translation_and_spelling() -> None:
    body = ChatCompletionRequest(messages=[{"role": "developer", "content": [{"type": "text", "text": "be"}]}],
                                 max_completion_tokens=7, logprobs=True, top_logprobs=1, stream=True,
                                 stream_options={"include_usage": True})  # type: ignore[list-item,arg-type]  # fmt: skip
    sub = translate.chat(body)
    assert sub.messages == [{"role": "system", "content": "be"}]
    assert sub.config["max_tokens"] == 7 and sub.include_usage and sub.stream
    with pytest.raises(errors.ApiError) as bad:
        translate.chat(ChatCompletionRequest(messages=body.messages, max_completion_tokens=0))
    assert bad.value.param == "max_completion_tokens"


@pytest.mark.parametrize("field", ["presence_penalty", "tools", "store", "response_format"])
def test_chat_refuses_what_it_cannot_honour(field: str) -> None:
    values = {"presence_penalty": 1.0, "tools": [{}], "store": True, "response_format": {"type": "json_object"}}
    with pytest.raises(errors.ApiError) as bad:
        translate.chat(ChatCompletionRequest(messages=[{"role": "user", "content": "x"}], **{field: values[field]}))  # type: ignore[list-item]
    assert bad.value.status == 400 and bad.value.param == field


def test_every_worker_error_type_has_a_status() -> None:
    assert set(errors.WORKER_ERRORS) == set(ERROR_TYPES)
    assert errors.from_worker_error("prompt_too_long", "m").status == 400
    assert errors.from_worker_error("something new", "m").status == 502  # unknown -> internal
    assert errors.from_exception(ValidationError("n", "bad")).param == "n"
    assert errors.from_exception(RequestNotFound("r", "gone")).status == 404
    unavailable = errors.from_exception(RelayConnectionError("down"))
    assert unavailable.status == 503 and unavailable.headers() == {"Retry-After": "5"}
    assert errors.from_exception(GenerationFailed("r", "engine_full", "full")).status == 503


def test_chunks_role_usage_and_finish_reasons() -> None:
    head = render.Head("chat", "rid", "m", 1)
    renderer = render.ChunkRenderer(head, include_usage=True, from_start=True)
    first = renderer.chunks(Record(seq=0, text="a"))
    assert first[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"} and first[0]["usage"] is None
    last = renderer.chunks(Record(seq=1, text="b", finish_reason="cancelled", usage=Usage(1, 2, 3)))
    choice = last[0]["choices"][0]
    assert choice["delta"] == {"content": "b"}
    assert choice["finish_reason"] == "stop" and choice["tokenrelay_finish_reason"] == "cancelled"
    assert last[1]["choices"] == [] and last[1]["usage"]["total_tokens"] == 3


def test_completion_logprobs_offsets() -> None:
    lps = [TokenLogprob("ab", [97, 98], -0.5, [TopLogprob("ab", [97, 98], -0.5)]), TokenLogprob("c", [99], -1.0)]
    out = render.completion_logprobs(lps, 3)
    assert out["text_offset"] == [3, 5] and out["top_logprobs"] == [{"ab": -0.5}, {}]
