"""The official ``openai`` client (sync and async, streaming and not, completions and chat)
against a real gateway process, a real server and a real worker (the tiny model).

Its text equals the Python reader's for the same greedy request."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.support.gateway_process import gateway_process, wait_for_worker
from workers.launcher import Stack

pytestmark = pytest.mark.integration

PROMPT = "Once upon a time"
MESSAGES = [{"role": "user", "content": "Tell me a story."}]


@pytest.fixture(scope="module")
def gateway(tiny_stack: Stack) -> Iterator[tuple[str, str]]:
    with gateway_process(tiny_stack.url) as base:
        yield base, wait_for_worker(base)


@pytest.fixture
def client(gateway: tuple[str, str]) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=gateway[0] + "/v1", api_key="unused", max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture
def model(gateway: tuple[str, str]) -> str:
    return gateway[1]


def reader_text(stack: Stack, **submit: object) -> str:
    rid = stack.producer.submit(**submit)  # type: ignore[arg-type]
    return stack.reader.result(rid).text


def test_completion_matches_reader(client: openai.OpenAI, model: str, tiny_stack: Stack) -> None:
    raw = client.completions.with_raw_response.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    completion = raw.parse()
    assert raw.headers["x-request-id"] == completion.id
    assert completion.object == "text_completion"
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    assert completion.choices[0].text == reader_text(tiny_stack, prompt=PROMPT, max_tokens=12, temperature=0)


def test_chat_stream_matches_reader(client: openai.OpenAI, model: str, tiny_stack: Stack) -> None:
    stream = client.chat.completions.create(
        model=model, messages=MESSAGES, max_completion_tokens=10, temperature=0, stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 10
    assert text == reader_text(tiny_stack, messages=MESSAGES, max_tokens=10, temperature=0)


def test_chat_logprobs_and_stop(client: openai.OpenAI, model: str) -> None:
    first = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=16, temperature=0)  # type: ignore[arg-type]
    full = first.choices[0].message.content or ""
    stop = full[6:8]
    assert stop, f"need a longer output: {full!r}"
    reply = client.chat.completions.create(
        model=model, messages=MESSAGES, max_tokens=16, temperature=0, stop=[stop], logprobs=True, top_logprobs=2,  # type: ignore[arg-type]
    )  # fmt: skip
    choice = reply.choices[0]
    assert choice.message.content == full[: full.index(stop)]
    assert choice.finish_reason == "stop"
    assert choice.logprobs is not None and choice.logprobs.content
    assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)


async def test_async_completions_n_logprobs_stream(gateway: tuple[str, str]) -> None:
    base, model = gateway
    async with openai.AsyncOpenAI(base_url=base + "/v1", api_key="unused", max_retries=0, timeout=60) as client:
        whole = await client.completions.create(model=model, prompt=PROMPT, max_tokens=8, n=2, seed=3, logprobs=1)
        assert sorted(c.index for c in whole.choices) == [0, 1]
        for choice in whole.choices:
            assert choice.logprobs is not None and len(choice.logprobs.tokens or []) == 8
            assert all(len(top) == 1 for top in choice.logprobs.top_logprobs or [])
        stream = await client.completions.create(
            model=model, prompt=PROMPT, max_tokens=8, n=2, seed=3, logprobs=1, stream=True
        )
        texts = ["", ""]
        async for chunk in stream:
            for c in chunk.choices:
                texts[c.index] += c.text
        assert texts == [c.text for c in sorted(whole.choices, key=lambda c: c.index)]


def test_models_lists_the_worker(client: openai.OpenAI, model: str) -> None:
    assert model in [m.id for m in client.models.list()]
