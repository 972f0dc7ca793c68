"""Chunked prefill (core.py, packed.py): a prompt that joins while rows decode is prefilled a
chunk per step, packed into the decode pass; the rows keep decoding meanwhile, and the joining
request's tokens are exactly those of an unchunked run.

The real model (SmolLM2) checks greedy tokens against a run alone and against transformers'
`generate`; the tiny random model covers forks, resume, cancel and failure mid-prefill.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM

from schemas.config import GenerationConfig
from tests.unit.test_engine_semantics import Trace, check_stream, drive
from workers.engine.core import EngineCore
from workers.engine.engine import Engine
from workers.engine.model_runner import LoadedModel, load_model
from workers.engine.output import CoreStep, Resume
from workers.engine.prompt import encode_prompt
from workers.engine.scheduler import Limits

LONG_PROMPT = (
    "The lighthouse stood at the end of a narrow spit of rock, and for forty years the same keeper "
    "had climbed its spiral stairs every evening to light the lamp. He knew every ship that passed, "
    "every storm that came in from the west, and every gull that nested on the gallery rail. One "
    "morning in late autumn he found a letter on the doorstep, sealed with red wax, and it said"
)


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> LoadedModel:
    return load_model("smol", str(smollm2_dir))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Iterator[LoadedModel]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model gains nothing from threads (test_engine_semantics)
    try:
        yield load_model("tiny", str(tiny_model_dir))
    finally:
        torch.set_num_threads(threads)


def greedy(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"prompt": prompt, "config": GenerationConfig(max_tokens=max_tokens, temperature=0, ignore_eos=True)}


def seeded(prompt: str, **extra: Any) -> dict[str, Any]:
    config = {"max_tokens": 12, "temperature": 1.0, "seed": 99, "n": 3, "ignore_eos": True, **extra}
    return {"prompt": prompt, "config": GenerationConfig(**config)}


def spy_steps(engine: Engine) -> list[CoreStep]:
    """Record every `CoreStep` the engine's core produces."""
    steps: list[CoreStep] = []
    step = engine.core.step

    def recording() -> CoreStep | None:
        produced = step()
        if produced is not None:
            steps.append(produced)
        return produced

    engine.core.step = recording  # type: ignore[method-assign]
    return steps


def prefill_steps(steps: list[CoreStep], rid: str, running: str) -> list[CoreStep]:
    """The steps from the first one after ``running``'s own admission up to the one that
    completed ``rid``'s prefill."""
    first = next(i for i, s in enumerate(steps) if running in s.admitted) + 1
    last = next(i for i, s in enumerate(steps) if rid in s.admitted)
    return steps[first : last + 1]


def test_long_prompt_chunked_while_a_row_decodes_equals_an_unchunked_run(smol: LoadedModel) -> None:
    chunk = 16
    engine = Engine(smol, Limits(prefill_chunk=chunk))
    steps = spy_steps(engine)
    together = drive(engine, {0: [("a", greedy("Once upon a time", 40))], 2: [("b", greedy(LONG_PROMPT, 16))]})
    prompt_ids = encode_prompt(smol, LONG_PROMPT, None)
    assert len(prompt_ids) > 4 * chunk

    # The long prompt took one chunk per step, and the running row got a token in every one.
    during = prefill_steps(steps, "b", "a")
    assert len(during) >= math.ceil(len(prompt_ids) / chunk)
    for s in during:
        assert "a" in s.decoded and [t for t in s.tokens if t[0] == "a"], "the running row kept decoding"

    for rid, request in (("a", greedy("Once upon a time", 40)), ("b", greedy(LONG_PROMPT, 16))):
        alone = drive(Engine(smol), {0: [(rid, request)]})  # nobody decoding: the prompt goes whole
        assert together.tokens(rid) == alone.tokens(rid), rid
        assert together.text(rid) == alone.text(rid)
        check_stream(together.records[rid], 1)

    # And greedy equals transformers' own generate.
    model = AutoModelForCausalLM.from_pretrained(smol.model.name_or_path).eval()
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt_ids]),
            attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
            max_new_tokens=16,
            do_sample=False,
            pad_token_id=smol.tokenizer.eos_token_id,
        )
    assert together.tokens("b") == out[0, len(prompt_ids) :].tolist()


def test_chunked_prefill_keeps_forks_seeds_and_timings(tiny: LoadedModel) -> None:
    prompt = "zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz zzz"
    engine = Engine(tiny, Limits(prefill_chunk=4))
    steps = spy_steps(engine)
    arrivals = {0: [("a", greedy("héllo", 40))], 2: [("n", seeded(prompt)), ("m", seeded("ab", seed=5, n=1))]}
    together = drive(engine, arrivals)
    assert len(prefill_steps(steps, "n", "a")) >= 3, "prefilled in chunks"
    alone = drive(Engine(tiny), {0: [("n", seeded(prompt))]})
    for index in range(3):
        assert together.tokens("n", index) == alone.tokens("n", index)
    check_stream(together.records["n"], 3)
    assert together.tokens("m") == drive(Engine(tiny), {0: [("m", seeded("ab", seed=5, n=1))]}).tokens("m")
    usage = together.records["n"][-1].usage
    assert usage is not None and usage.ttft_s is not None and usage.prefill_tokens_per_s is not None
    assert usage.queue_s <= usage.ttft_s


def test_chunked_prefill_of_a_resumed_request(tiny: LoadedModel) -> None:
    prompt = "a resumed request with a longish prompt"
    full = drive(Engine(tiny), {0: [("r", seeded(prompt, n=2, max_tokens=20))]})
    published = {0: full.tokens("r", 0)[:3], 1: full.tokens("r", 1)[:7]}
    resume = Resume(next_seq=len(full.records["r"]), tokens=published, texts={}, finished={})
    engine = Engine(tiny, Limits(prefill_chunk=4))
    steps = spy_steps(engine)
    request = {**seeded(prompt, n=2, max_tokens=20), "resume": resume}
    resumed = drive(engine, {0: [("a", greedy("héllo", 40))], 2: [("r", request)]})
    assert len(prefill_steps(steps, "r", "a")) >= 3
    for index in range(2):
        assert resumed.tokens("r", index) == full.tokens("r", index)[len(published[index]) :]


def test_cancel_mid_prefill_drops_it_and_ends_the_stream(tiny: LoadedModel) -> None:
    long = "zzz " * 30
    engine = Engine(tiny, Limits(prefill_chunk=4))
    trace = drive(
        engine,
        {0: [("a", greedy("héllo", 30))], 2: [("v", greedy(long, 10)), ("w", greedy("after", 5))]},
        aborts={4: ["v"]},
    )
    assert [r.finish_reason for r in trace.aborted["v"]] == ["cancelled"]
    assert trace.tokens("v") == []
    check_stream(trace.records["v"], 1)
    alone = drive(Engine(tiny), {0: [("a", greedy("héllo", 30))]})
    assert trace.tokens("a") == alone.tokens("a")
    assert len(trace.tokens("w")) == 5, "the request behind it was served"
    assert not engine.running and not engine.waiting


def test_a_failed_pass_mid_prefill_fails_its_requests_and_the_engine_goes_on(tiny: LoadedModel) -> None:
    engine = Engine(tiny, Limits(prefill_chunk=4))
    core = engine.core
    assert isinstance(core, EngineCore)
    run = core.runner.run
    calls = 0

    def failing_fourth_pass(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 4:
            raise RuntimeError("boom")
        return run(*args)

    core.runner.run = failing_fourth_pass  # type: ignore[method-assign,assignment]
    trace: Trace = drive(engine, {0: [("a", greedy("héllo", 30))], 2: [("v", greedy("zzz " * 30, 10))]})
    assert trace.records["v"][-1].finish_reason == "error"
    assert trace.records["a"][-1].finish_reason == "error"
    after = drive(engine, {0: [("b", greedy("again", 4))]})
    assert len(after.tokens("b")) == 4


def test_a_burst_that_outnumbers_the_running_rows_is_admitted_at_once(tiny: LoadedModel) -> None:
    engine = Engine(tiny, Limits(prefill_chunk=16))
    steps = spy_steps(engine)
    burst = [(f"b{i}", greedy(f"burst {i} arrives", 6)) for i in range(6)]  # 10 tokens each
    trace = drive(engine, {0: [("a", greedy("héllo", 30))], 2: burst})
    # One running row, six waiting: a budget of 6 chunks, so all six prefill together, in a
    # step or two, instead of one chunk's worth (one request) per step.
    admitted = [s.admitted for s in steps if s.admitted and "a" not in s.admitted]
    assert admitted == [[rid for rid, _ in burst]]
    assert len(prefill_steps(steps, "b0", "a")) <= 2
    alone = drive(Engine(tiny), {0: [("b3", greedy("burst 3 arrives", 6))]})
    assert trace.tokens("b3") == alone.tokens("b3")
    assert trace.tokens("a") == drive(Engine(tiny), {0: [("a", greedy("héllo", 30))]}).tokens("a")


def test_one_arrival_while_rows_decode_is_prefilled_a_chunk_per_step(tiny: LoadedModel) -> None:
    engine = Engine(tiny, Limits(prefill_chunk=4))
    steps = spy_steps(engine)
    drive(engine, {0: [("a", greedy("héllo", 30)), ("c", greedy("hi", 30))], 3: [("v", greedy("zzz " * 10, 4))]})
    assert len(prefill_steps(steps, "v", "c")) >= 3, "one waiting, two running: one chunk per step"


def test_a_prompt_is_chunked_in_even_shares(tiny: LoadedModel) -> None:
    engine = Engine(tiny, Limits(prefill_chunk=8))
    core = engine.core
    assert isinstance(core, EngineCore)
    run = core.runner.run
    passes: list[tuple[int, int]] = []  # (prompt width, columns) of each pass that carried a chunk

    def spy(cache: Any, tokens: Any, prompts: Any, columns: int) -> Any:
        if prompts is not None and cache is not None:
            passes.append((prompts.width, min(columns, prompts.remaining)))
        return run(cache, tokens, prompts, columns)

    core.runner.run = spy  # type: ignore[method-assign]
    trace = drive(engine, {0: [("a", greedy("héllo", 30))], 2: [("v", greedy("zzz " * 5, 4))]})
    width = passes[0][0]
    shares = [columns for _w, columns in passes]
    # Under a budget of 8, as few passes as full chunks would take, but no share larger than
    # another by more than one column (e.g. 11 columns: 6 + 5, not 8 + 3).
    assert width % 8, f"the prompt ({width} columns) must not split into full chunks for this test"
    assert sum(shares) == width and len(shares) == math.ceil(width / 8)
    assert max(shares) - min(shares) <= 1, shares
    assert core._chunks.base_s is None, "a fixed chunk: the auto sizer is not fed"
    assert trace.tokens("v") == drive(Engine(tiny), {0: [("v", greedy("zzz " * 5, 4))]}).tokens("v")


def test_auto_chunks_are_sized_from_the_passes_own_times(smol: LoadedModel) -> None:
    engine = Engine(smol, Limits(prefill_chunk=None, step_slowdown=1.5))  # "auto": chunk_sizer.py sizes it
    core = engine.core
    assert isinstance(core, EngineCore)
    assert core._chunks.slowdown == 1.5, "the sizer aims at the limits' slowdown"
    run = core.runner.run
    passes: list[tuple[int, int]] = []  # (columns carried, the sizer's chunk when the prefill began)

    def spy(cache: Any, tokens: Any, prompts: Any, columns: int) -> Any:
        if prompts is not None and cache is not None:
            passes.append((min(columns, prompts.remaining), passes[0][1] if passes else core._chunks.chunk))
        return run(cache, tokens, prompts, columns)

    core.runner.run = spy  # type: ignore[method-assign]
    arrivals = {0: [("a", greedy("Once upon a time", 40))], 6: [("b", greedy(LONG_PROMPT, 12))]}
    together = drive(engine, arrivals)
    # Plain steps and chunk steps were both measured, so the chunk in use is the sizer's own.
    assert core._chunks.base_s is not None and core._chunks.per_token_s is not None
    assert passes and all(columns <= chunk for columns, chunk in passes), passes
    assert sum(columns for columns, _chunk in passes) == len(encode_prompt(smol, LONG_PROMPT, None))
    alone = drive(Engine(smol), {0: [("b", greedy(LONG_PROMPT, 12))]})
    assert together.tokens("b") == alone.tokens("b")
