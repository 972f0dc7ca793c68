"""Generation semantics through real workers: chat templates, seeds across processes, failures,
stop strings and logprobs, as a consumer sees them on the stream."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from transformers import AutoTokenizer

from consumer import GenerationFailed
from schemas import Record, ValidationError, keys
from tests.integration.conftest import Stack, stack_of
from tests.support.reference import reference_text
from workers.engine.token_bytes import build_token_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_tok(tiny_model_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def read(stack: Stack, rid: str, timeout_s: float = 60) -> list[Record]:
    return list(stack.reader.stream(rid, timeout_s=timeout_s))


def tokens(records: list[Record], index: int = 0) -> list[int]:
    return [t for r in records if r.index == index for t in r.token_ids]


def text(records: list[Record], index: int = 0) -> str:
    return "".join(r.text for r in records if r.index == index)


def read_failure(stack: Stack, rid: str) -> tuple[list[Record], GenerationFailed]:
    """The records of a failed request and the error the reader raised after them."""
    seen: list[Record] = []
    with pytest.raises(GenerationFailed) as info:
        for record in stack.reader.stream(rid, timeout_s=60):
            seen.append(record)
    return seen, info.value


def assert_serves(stack: Stack) -> None:
    """The worker still answers a good request after a failure."""
    ok = stack.reader.result(stack.producer.submit("still here", max_tokens=4, ignore_eos=True), timeout_s=60)
    assert ok.finish_reasons == ["length"]


# -- the real model -----------------------------------------------------------------------------


def test_chat_ends_at_the_templates_end_of_turn(smol_stack: Stack, smollm2_dir: Path) -> None:
    rid = smol_stack.producer.submit(
        messages=[{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        max_tokens=32,
        temperature=0,
    )
    records = read(smol_stack, rid, timeout_s=120)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    end_of_turn = tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.eos_token_id == end_of_turn
    assert records[-1].finish_reason == "stop"
    assert "Paris" in text(records)
    assert tokens(records)[-1] == end_of_turn
    assert "<|im_end|>" not in text(records)


# -- seeds across worker processes --------------------------------------------------------------


@pytest.fixture(scope="module")
def second_tiny_stack(server_factory: Any, tiny_model_dir: Path) -> Iterator[Stack]:
    """Another worker process with its own server, serving the same tiny model."""
    yield from stack_of(server_factory(), str(tiny_model_dir), ["--threads", "1"])


def test_a_nucleus_of_one_token_samples_the_greedy_tokens(tiny_stack: Stack) -> None:
    """Top-p through a real worker (sampler.nucleus): a top_p so small that only the most
    probable token is ever kept draws, at temperature 1 and any seed, exactly greedy's tokens;
    a top_p of 0.9 on the same seed draws the same tokens twice."""
    prompt, config = "héllo 日本", {"max_tokens": 24, "ignore_eos": True}
    greedy = tokens(read(tiny_stack, tiny_stack.producer.submit(prompt, temperature=0, **config)))
    narrow = tokens(read(tiny_stack, tiny_stack.producer.submit(prompt, temperature=1.0, top_p=1e-9, seed=3, **config)))
    assert narrow == greedy and len(greedy) == 24
    wide = [
        tokens(read(tiny_stack, tiny_stack.producer.submit(prompt, temperature=1.0, top_p=0.9, seed=5, **config)))
        for _ in range(2)
    ]
    assert wide[0] == wide[1] and len(wide[0]) == 24


def test_same_seed_same_tokens_on_two_workers(tiny_stack: Stack, second_tiny_stack: Stack) -> None:
    config = {"max_tokens": 24, "temperature": 1.0, "n": 2, "ignore_eos": True}
    runs = [read(s, s.producer.submit("héllo 日本", seed=99, **config)) for s in (tiny_stack, second_tiny_stack)]
    assert runs[0][0].entry_id is not None and tiny_stack.worker.pid != second_tiny_stack.worker.pid
    for index in range(2):
        assert tokens(runs[0], index) == tokens(runs[1], index)
        assert len(tokens(runs[0], index)) == 24
    assert tokens(runs[0], 0) != tokens(runs[0], 1)
    unseeded = [tokens(read(s, s.producer.submit("héllo 日本", **config))) for s in (tiny_stack, second_tiny_stack)]
    assert unseeded[0] != unseeded[1]


# -- failures, each followed by a good request ---------------------------------------------------


def test_prompt_too_long_fails_with_usage(tiny_stack: Stack, tiny_tok: Any, tiny_model_dir: Path) -> None:
    import json

    context = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    prompt = "ab xyz " * context
    assert len(tiny_tok.encode(prompt)) > context
    records, error = read_failure(tiny_stack, tiny_stack.producer.submit(prompt, max_tokens=5))
    assert error.error_type == "prompt_too_long"
    last = records[-1]
    assert last.finish_reason == "error" and last.usage is not None and last.error is not None
    assert last.error.type == "prompt_too_long"
    assert last.usage.completion_tokens == 0
    assert_serves(tiny_stack)


def test_unknown_model_fails_with_usage(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("hi", model="no/such", queue="tokenrelay", max_tokens=5)
    records, error = read_failure(tiny_stack, rid)
    assert error.error_type == "unknown_model"
    assert records[-1].finish_reason == "error" and records[-1].usage is not None
    assert_serves(tiny_stack)


@pytest.mark.parametrize(
    ("fields", "culprit"),
    [
        ({"temperature": -1.0}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"top_p": 0.0}, "top_p"),
        ({"stop": [""]}, "stop"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_invalid_config_never_reaches_redis(tiny_stack: Stack, fields: dict[str, Any], culprit: str) -> None:
    client = redis.Redis.from_url(tiny_stack.url)
    try:
        queued = client.llen("tokenrelay")
        rid = f"invalid-{culprit}"
        with pytest.raises(ValidationError) as info:
            tiny_stack.producer.submit("hi", request_id=rid, **fields)
        assert info.value.field == culprit and culprit in str(info.value)
        assert not client.exists(keys.meta_key(rid), keys.deltas_key(rid))
        assert client.llen("tokenrelay") == queued
    finally:
        client.close()
    assert_serves(tiny_stack)


# -- stop strings and logprobs ------------------------------------------------------------------


def test_stop_strings_through_the_pipeline(tiny_stack: Stack, tiny_tok: Any) -> None:
    config = {"max_tokens": 30, "temperature": 0.8, "seed": 5, "ignore_eos": True}
    free = read(tiny_stack, tiny_stack.producer.submit("stop here", **config))
    full, _ = reference_text(tiny_tok, tokens(free))
    assert len(full) > 12
    stop = next(full[i : i + 3] for i in range(5, len(full) - 3) if "\ufffd" not in full[i : i + 3])
    start = full.find(stop)
    for include in (False, True):
        rid = tiny_stack.producer.submit("stop here", stop=[stop], include_stop_str_in_output=include, **config)
        records = read(tiny_stack, rid)
        expected, matched = reference_text(tiny_tok, tokens(records), [stop], include)
        assert matched and records[-1].finish_reason == "stop"
        assert text(records) == expected == (full[: start + len(stop)] if include else full[:start])
        assert tokens(records) == tokens(free)[: len(tokens(records))]
        assert records[-1].usage is not None and records[-1].usage.completion_tokens == len(tokens(records))


def test_logprobs_align_with_token_ids(tiny_stack: Stack, tiny_tok: Any) -> None:
    rid = tiny_stack.producer.submit(
        "日本語", max_tokens=20, temperature=0.7, seed=1, logprobs=True, top_logprobs=2, n=2, ignore_eos=True
    )
    records = read(tiny_stack, rid)
    table = build_token_bytes(tiny_tok)
    for record in records:
        assert record.logprobs is not None and len(record.logprobs) == len(record.token_ids)
        for token, lp in zip(record.token_ids, record.logprobs, strict=True):
            assert bytes(lp.bytes) == table[token]
            assert lp.logprob <= 0.0
            assert len(lp.top_logprobs) == 2 and lp.top_logprobs[0].logprob >= lp.logprob
    assert all(len(tokens(records, i)) == 20 for i in range(2))
