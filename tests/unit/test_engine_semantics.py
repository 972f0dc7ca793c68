"""Engine semantics, in-process on the tiny random model: stop conditions, text, logprobs, seeds,
batching, limits and coalescing.

Every check compares the engine's records with something computed independently: the text with
`reference_text` (one-shot UTF-8 of the token bytes, cut at the earliest-ending stop match), the
logprobs with a plain forward pass of the same model, a request's tokens with the same request
run alone or by a second engine.
"""

from __future__ import annotations

import codecs
import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import GenerationConfig
from schemas.records import Record
from tests.support.reference import reference_text, token_bytes_of
from workers.engine.engine import Engine
from workers.engine.model_runner import LoadedModel, load_model
from workers.engine.prompt import encode_prompt
from workers.engine.scheduler import EngineFull, Limits

REPLACEMENT = "\ufffd"
ALPHABET = "ab xyz.日本語テキ中文ρκαдлé👍🎉\n"


@pytest.fixture(scope="module")
def loaded(tiny_model_dir: Path) -> Iterator[LoadedModel]:
    # The tiny model's matmuls are far too small to gain from threads; on a busy machine
    # torch's thread pool only waits for cores (one thread makes this module ~3x faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield load_model("tiny", str(tiny_model_dir))
    finally:
        torch.set_num_threads(threads)


# -- driving the engine -------------------------------------------------------------------------


@dataclass
class Trace:
    """Everything one engine run emitted, per request, with the step each record came out of."""

    records: dict[str, list[Record]] = field(default_factory=dict)
    steps: dict[str, list[int]] = field(default_factory=dict)
    running: list[set[str]] = field(default_factory=list)  # engine.running after each step
    aborted: dict[str, list[Record]] = field(default_factory=dict)

    def add(self, step: int, rid: str, record: Record) -> None:
        self.records.setdefault(rid, []).append(record)
        self.steps.setdefault(rid, []).append(step)

    def choice(self, rid: str, index: int = 0) -> list[Record]:
        return [r for r in self.records[rid] if r.index == index]

    def tokens(self, rid: str, index: int = 0) -> list[int]:
        return [t for r in self.choice(rid, index) for t in r.token_ids]

    def text(self, rid: str, index: int = 0) -> str:
        return "".join(r.text for r in self.choice(rid, index))

    def first_step(self, rid: str) -> int:
        """The step at which a request first ran (entered ``engine.running``)."""
        return next(i for i, running in enumerate(self.running) if rid in running)


Arrivals = Mapping[int, Sequence[tuple[str, Mapping[str, Any]]]]


def drive(
    engine: Engine, arrivals: Arrivals, aborts: Mapping[int, Iterable[str]] | None = None, max_steps: int = 2000
) -> Trace:
    """Add requests at the given steps (before that step runs), abort some, step until idle."""
    trace = Trace()
    last_arrival = max(arrivals, default=0)
    for step in range(max_steps):
        for rid, req in arrivals.get(step, ()):
            kwargs = dict(req)
            config = kwargs.pop("config")
            engine.add(rid, config=config, **kwargs)
        for rid in (aborts or {}).get(step, ()):
            for arid, record in engine.abort([rid]):
                trace.add(step, arid, record)
                trace.aborted.setdefault(arid, []).append(record)
        if step > last_arrival and not engine.has_work():
            return trace
        for rid, record in engine.step():
            trace.add(step, rid, record)
        trace.running.append(set(engine.running))
    raise AssertionError(f"engine still busy after {max_steps} steps")


def run_one(loaded: LoadedModel, prompt: str, **config: Any) -> Trace:
    return drive(Engine(loaded), {0: [("r", {"prompt": prompt, "config": GenerationConfig(**config)})]})


def check_stream(records: list[Record], n: int, prompt_tokens: int | None = None) -> None:
    """The stream-level contract of one request's records."""
    assert [r.seq for r in records] == list(range(len(records)))
    assert [r.usage is not None for r in records] == [False] * (len(records) - 1) + [True]
    for index in range(n):
        mine = [r for r in records if r.index == index]
        assert mine, f"choice {index} has no record"
        finals = [r for r in mine if r.finish_reason is not None]
        assert finals == [mine[-1]], f"choice {index}: one finish_reason, on its last record"
        for r in mine:
            if r.logprobs is not None:
                assert len(r.logprobs) == len(r.token_ids)
    usage = records[-1].usage
    assert usage is not None
    assert usage.completion_tokens == sum(len(r.token_ids) for r in records)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    if prompt_tokens is not None:
        assert usage.prompt_tokens == prompt_tokens


def check_text(records: list[Record], expected: str) -> None:
    """Concatenated text equals ``expected`` and every record extends a prefix of it, so no
    record ever carried a U+FFFD (or any character) that the reference has not at that place."""
    so_far = ""
    for r in records:
        so_far += r.text
        assert expected.startswith(so_far), (so_far, expected)
    assert so_far == expected


def stop_ids(loaded: LoadedModel, config: GenerationConfig) -> set[int]:
    return set(config.stop_token_ids) | (set() if config.ignore_eos else set(loaded.eos_token_ids))


def expected_choice(loaded: LoadedModel, config: GenerationConfig, tokens: list[int]) -> tuple[str, str]:
    """(text, finish_reason) a choice that generated ``tokens`` must show, from the ids alone."""
    tok = loaded.tokenizer
    if tokens and tokens[-1] in stop_ids(loaded, config):
        # A stop token's id is reported, its text never.  A stop string may match in the text
        # before it: a character followed by half of the next one (or by a stray byte) is only
        # decoded once a later token shows how the bytes go on, here the stop token.
        return reference_text(tok, tokens[:-1], config.stop, config.include_stop_str_in_output)[0], "stop"
    text, matched = reference_text(tok, tokens, config.stop, config.include_stop_str_in_output)
    if matched:
        return text, "stop"
    assert len(tokens) == config.max_tokens, "ended without stop or length"
    return text, "length"


def check_request(loaded: LoadedModel, trace: Trace, rid: str, prompt: str, config: GenerationConfig) -> None:
    records = trace.records[rid]
    check_stream(records, config.n, len(encode_prompt(loaded, prompt, None)))
    for index in range(config.n):
        tokens = trace.tokens(rid, index)
        text, reason = expected_choice(loaded, config, tokens)
        check_text(trace.choice(rid, index), text)
        assert trace.choice(rid, index)[-1].finish_reason == reason
        if reason == "length":
            assert len(tokens) == config.max_tokens
        else:
            assert 1 <= len(tokens) <= config.max_tokens


# -- the property -------------------------------------------------------------------------------


def substring(data: st.DataObject, text: str) -> str:
    start = data.draw(st.integers(0, len(text) - 1))
    return text[start : start + data.draw(st.integers(1, 4))]


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    prompt=st.text(ALPHABET, min_size=1, max_size=12),
    seed=st.integers(0, 2**32),
    temperature=st.sampled_from([0.0, 0.7, 1.0]),
    n=st.integers(1, 3),
    max_tokens=st.integers(1, 24),
    include=st.booleans(),
)
def test_streamed_text_and_finish_match_reference(
    loaded: LoadedModel,
    data: st.DataObject,
    prompt: str,
    seed: int,
    temperature: float,
    n: int,
    max_tokens: int,
    include: bool,
) -> None:
    base = GenerationConfig(max_tokens=max_tokens, temperature=temperature, seed=seed, n=n)
    free = run_one(loaded, prompt, **base.to_dict())
    check_request(loaded, free, "r", prompt, base)

    # Stop strings mostly cut from what this very request produces, so that matches happen (the
    # per-token seeding makes the rerun draw the same tokens up to the point where it stops).
    texts = [reference_text(loaded.tokenizer, free.tokens("r", i))[0] for i in range(n)]
    stops: list[str] = []
    for _ in range(data.draw(st.integers(0, 3))):
        source = data.draw(st.sampled_from([t for t in texts if t] or [""]))
        if source and data.draw(st.integers(0, 3)):
            stops.append(substring(data, source))
        else:
            stops.append(data.draw(st.text(ALPHABET, min_size=1, max_size=3)))
    generated = free.tokens("r", 0)
    stop_token_ids = [data.draw(st.sampled_from(generated))] if generated and data.draw(st.integers(0, 4)) == 0 else []
    config = base.replace(stop=tuple(stops), stop_token_ids=tuple(stop_token_ids), include_stop_str_in_output=include)

    stopped = run_one(loaded, prompt, **config.to_dict())
    check_request(loaded, stopped, "r", prompt, config)
    for index in range(n):
        tokens, reference = stopped.tokens("r", index), free.tokens("r", index)
        assert tokens == reference[: len(tokens)], "stopping changed the tokens drawn before the stop"
        text, _ = expected_choice(loaded, config, tokens)
        if stops and not include:
            assert not any(s in text for s in stops)


# -- stop strings, stop tokens, eos, max_tokens -------------------------------------------------

PROMPT = "héllo wörld 日本"


@pytest.fixture(scope="module")
def greedy(loaded: LoadedModel) -> list[int]:
    """40 greedy tokens of PROMPT (no stop token of the tiny model among them)."""
    tokens = run_one(loaded, PROMPT, max_tokens=40, temperature=0).tokens("r")
    assert len(tokens) == 40
    return tokens


def char_offsets(loaded: LoadedModel, tokens: list[int]) -> list[int]:
    """offsets[k]: characters of text out after k tokens (whole characters only)."""
    return [len(reference_text(loaded.tokenizer, tokens[:k])[0]) for k in range(len(tokens) + 1)]


def test_stop_string_starting_and_ending_mid_token(loaded: LoadedModel, greedy: list[int]) -> None:
    text = reference_text(loaded.tokenizer, greedy)[0]
    offsets = char_offsets(loaded, greedy)
    inside = {c for k in range(len(greedy)) for c in range(offsets[k] + 1, offsets[k + 1])}  # mid-token cuts
    # The first stop string that starts and ends inside tokens (and whose first match is there).
    start, end = next(
        (s, e)
        for s in sorted(inside)
        for e in sorted(inside)
        if s < e <= s + 6 and text.find(text[s:e]) == s and REPLACEMENT not in text[s:e]
    )
    stop = text[start:end]
    ends_in = next(k for k in range(len(greedy) + 1) if offsets[k] >= end)  # tokens needed to see it
    for include in (False, True):
        trace = run_one(loaded, PROMPT, max_tokens=40, temperature=0, stop=[stop], include_stop_str_in_output=include)
        records = trace.records["r"]
        check_stream(records, 1)
        check_text(records, text[:end] if include else text[:start])
        assert records[-1].finish_reason == "stop"
        assert trace.tokens("r") == greedy[:ends_in], "stops at the token that completes the match"


def test_overlapping_stop_strings(loaded: LoadedModel, greedy: list[int]) -> None:
    text = reference_text(loaded.tokenizer, greedy)[0]
    # A window whose pieces all first occur where they are cut from.
    s = next(
        i
        for i in range(2, len(text) - 4)
        if REPLACEMENT not in text[i : i + 4]
        and all(text.find(text[a:b]) == a for a, b in ((i, i + 4), (i + 1, i + 3), (i + 2, i + 4)))
    )
    # The match that ends first wins, even though the other one starts first.
    trace = run_one(loaded, PROMPT, max_tokens=40, temperature=0, stop=[text[s : s + 4], text[s + 1 : s + 3]])
    check_text(trace.records["r"], text[: s + 1])
    assert trace.records["r"][-1].finish_reason == "stop"
    # Two matches that end together: the longer one (starting first) wins.
    for include in (False, True):
        trace = run_one(
            loaded,
            PROMPT,
            max_tokens=40,
            temperature=0,
            stop=[text[s + 2 : s + 4], text[s : s + 4]],
            include_stop_str_in_output=include,
        )
        check_text(trace.records["r"], text[: s + 4] if include else text[:s])
        assert trace.records["r"][-1].finish_reason == "stop"


def test_stop_string_in_the_prompt_has_no_effect(loaded: LoadedModel, greedy: list[int]) -> None:
    text = reference_text(loaded.tokenizer, greedy)[0]
    stop = next(w for w in ("héllo", "wörld", "日本", "llo w") if w not in text)
    trace = run_one(loaded, PROMPT, max_tokens=40, temperature=0, stop=[stop])
    assert trace.tokens("r") == greedy
    check_text(trace.records["r"], text)
    assert trace.records["r"][-1].finish_reason == "length"


def test_stop_token_ids_end_the_choice_without_their_text(loaded: LoadedModel, greedy: list[int]) -> None:
    stop_token = greedy[5]
    first = greedy.index(stop_token)
    trace = run_one(loaded, PROMPT, max_tokens=40, temperature=0, stop_token_ids=[stop_token])
    records = trace.records["r"]
    check_stream(records, 1)
    assert trace.tokens("r") == greedy[: first + 1]
    assert records[-1].token_ids[-1] == stop_token and records[-1].finish_reason == "stop"
    check_text(records, reference_text(loaded.tokenizer, greedy[:first])[0])


def test_eos_stops_unless_ignore_eos(loaded: LoadedModel, greedy: list[int]) -> None:
    # The random model hardly ever emits its real EOS, so make a token it does emit the EOS.
    eos = greedy[7]
    first = greedy.index(eos)
    patched = dataclasses.replace(loaded, eos_token_ids=frozenset({eos}))
    stopped = drive(
        Engine(patched), {0: [("r", {"prompt": PROMPT, "config": GenerationConfig(max_tokens=40, temperature=0)})]}
    )
    assert stopped.tokens("r") == greedy[: first + 1]
    assert stopped.records["r"][-1].finish_reason == "stop"
    check_text(stopped.records["r"], reference_text(loaded.tokenizer, greedy[:first])[0])
    ignoring = drive(
        Engine(patched),
        {0: [("r", {"prompt": PROMPT, "config": GenerationConfig(max_tokens=40, temperature=0, ignore_eos=True)})]},
    )
    assert ignoring.tokens("r") == greedy
    assert ignoring.records["r"][-1].finish_reason == "length"
    assert ignoring.records["r"][-1].usage.completion_tokens == 40  # type: ignore[union-attr]


def test_max_tokens_one(loaded: LoadedModel, greedy: list[int]) -> None:
    trace = run_one(loaded, PROMPT, max_tokens=1, temperature=0, n=2)
    check_stream(trace.records["r"], 2)
    for index in range(2):
        assert trace.tokens("r", index) == greedy[:1]
        assert trace.choice("r", index)[-1].finish_reason == "length"
        check_text(trace.choice("r", index), reference_text(loaded.tokenizer, greedy[:1])[0])
    assert trace.records["r"][-1].usage.completion_tokens == 2  # type: ignore[union-attr]
    assert trace.steps["r"] == [0] * len(trace.records["r"]), "everything comes out of the prefill step"


def test_context_window_ends_with_length(loaded: LoadedModel) -> None:
    """A choice stops with ``length`` when prompt plus output fill the model's context, whatever
    max_tokens says; a prompt that fills it alone is refused."""
    tok = loaded.tokenizer
    ids = tok.encode("ab " * loaded.max_context)
    for size, produced in ((loaded.max_context - 3, 3), (loaded.max_context - 1, 1)):
        prompt = tok.decode(ids[:size])
        assert len(encode_prompt(loaded, prompt, None)) == size
        trace = run_one(loaded, prompt, max_tokens=10, n=2, ignore_eos=True, seed=1)
        check_stream(trace.records["r"], 2, size)
        assert [len(trace.tokens("r", i)) for i in range(2)] == [produced, produced]
        assert [trace.choice("r", i)[-1].finish_reason for i in range(2)] == ["length", "length"]
    trace = run_one(loaded, tok.decode(ids[: loaded.max_context]), max_tokens=10)
    check_stream(trace.records["r"], 1)
    last = trace.records["r"][-1]
    assert last.finish_reason == "error" and last.error is not None and last.error.type == "prompt_too_long"


# -- logprobs -----------------------------------------------------------------------------------


def next_logits(loaded: LoadedModel, ids: list[int]) -> torch.Tensor:
    """Plain single-sequence forward of the same model: fp32 logits of the next token."""
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([ids], device=loaded.device))
    return out.logits[0, -1].float().cpu()


def test_greedy_logprobs_equal_log_softmax_of_a_plain_forward(loaded: LoadedModel) -> None:
    trace = run_one(loaded, PROMPT, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3)
    prompt_ids = encode_prompt(loaded, PROMPT, None)
    tokens = trace.tokens("r")
    lps = [lp for r in trace.records["r"] for lp in r.logprobs or []]
    assert len(lps) == len(tokens) == 16
    table = loaded.token_bytes
    for i, (token, lp) in enumerate(zip(tokens, lps, strict=True)):
        logp = torch.log_softmax(next_logits(loaded, prompt_ids + tokens[:i]), dim=-1)
        assert int(logp.argmax()) == token, "greedy picks the argmax of the plain forward"
        assert lp.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        assert lp.bytes == list(table[token])
        assert len(lp.top_logprobs) == 3
        assert (lp.top_logprobs[0].token, lp.top_logprobs[0].bytes) == (lp.token, lp.bytes)
        values, ids = torch.topk(logp, 3)
        assert [t.bytes for t in lp.top_logprobs] == [list(table[j]) for j in ids.tolist()]
        assert [t.logprob for t in lp.top_logprobs] == pytest.approx(values.tolist(), abs=1e-4)
    # The bytes of the tokens are the bytes behind the text.
    special = set(loaded.tokenizer.all_special_ids)
    joined = b"".join(bytes(lp.bytes) for token, lp in zip(tokens, lps, strict=True) if token not in special)
    assert joined == token_bytes_of(loaded.tokenizer, tokens)
    text = codecs.getincrementaldecoder("utf-8")("replace").decode(joined, final=False)
    assert trace.text("r") == text


def test_sampled_logprobs_come_from_the_processed_distribution(loaded: LoadedModel) -> None:
    temperature, top_k = 0.7, 5
    trace = run_one(
        loaded, PROMPT, max_tokens=12, temperature=temperature, top_k=top_k, seed=3, logprobs=True, top_logprobs=8
    )
    prompt_ids = encode_prompt(loaded, PROMPT, None)
    tokens = trace.tokens("r")
    lps = [lp for r in trace.records["r"] for lp in r.logprobs or []]
    assert len(lps) == len(tokens) == 12
    table = loaded.token_bytes
    for i, (token, lp) in enumerate(zip(tokens, lps, strict=True)):
        scaled = next_logits(loaded, prompt_ids + tokens[:i]) / temperature
        allowed = torch.topk(scaled, top_k).indices
        masked = torch.full_like(scaled, float("-inf")).index_copy(0, allowed, scaled[allowed])
        logp = torch.log_softmax(masked, dim=-1)
        assert token in allowed.tolist(), "sampled outside top-k"
        assert lp.logprob == pytest.approx(float(logp[token]), abs=1e-4)
        finite = lp.top_logprobs  # alternatives that top-k ruled out (-inf) are not listed
        assert all(t.logprob != float("-inf") for t in finite)
        assert {bytes(t.bytes) for t in finite} == {table[j] for j in allowed.tolist()}
        assert len(finite) == top_k, "tokens outside top-k are never listed"
        assert sum(torch.tensor([t.logprob for t in finite]).exp().tolist()) == pytest.approx(1.0, abs=1e-4)


# -- seeds --------------------------------------------------------------------------------------


def seeded(prompt: str, **extra: Any) -> dict[str, Any]:
    config = {"max_tokens": 30, "temperature": 1.0, "seed": 1234, "n": 2, "ignore_eos": True, **extra}
    return {"prompt": prompt, "config": GenerationConfig(**config)}


def test_same_seed_same_tokens_across_engines(loaded: LoadedModel) -> None:
    runs = [drive(Engine(loaded), {0: [("r", seeded("seed me"))]}) for _ in range(2)]
    assert [runs[0].tokens("r", i) for i in range(2)] == [runs[1].tokens("r", i) for i in range(2)]
    assert runs[0].tokens("r", 0) != runs[0].tokens("r", 1), "choices draw from their own streams"


def test_seeded_request_ignores_its_batch_neighbours(loaded: LoadedModel) -> None:
    alone = drive(Engine(loaded), {0: [("s", seeded("seed me"))]})
    others = {
        0: [("s", seeded("seed me")), ("o1", seeded("other one", seed=None, max_tokens=12))],
        2: [("o2", seeded("日本語のテキスト", seed=None, top_p=0.9))],
        5: [("o3", seeded("ab", seed=None, temperature=0.0, n=1, max_tokens=40))],
    }
    together = drive(Engine(loaded), others)
    assert max(len(r) for r in together.running) >= 3, "the requests really shared the batch"
    for index in range(2):
        assert together.tokens("s", index) == alone.tokens("s", index)


def test_no_seed_differs_between_runs(loaded: LoadedModel) -> None:
    config = {"prompt": "random", "config": GenerationConfig(max_tokens=30, temperature=1.0, ignore_eos=True)}
    a, b = (drive(Engine(loaded), {0: [("r", config)]}) for _ in range(2))
    assert a.tokens("r") != b.tokens("r")


# -- batching, cancel, limits, coalescing -------------------------------------------------------

BATCH = [
    (0, "a", "héllo", 20),
    (0, "b", "日本語のテキスト、とても長い文章です", 9),
    (1, "c", "x", 30),
    (3, "d", "ρκαдл ab xyz", 5),
    (5, "e", "🎉👍 fête", 25),
    (8, "f", "zzz zzz zzz zzz zzz zzz", 14),
]


def greedy_request(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {"prompt": prompt, "config": GenerationConfig(max_tokens=max_tokens, temperature=0, ignore_eos=True)}


def test_greedy_batch_equals_each_request_alone(loaded: LoadedModel) -> None:
    """Token ids of each request run alone equal those of all six run together, joining at
    different steps with different prompt lengths (left padding, rows joining and leaving).
    Compared exactly: on CPU fp32 the padded rows give logits equal to well below the gaps
    between the tiny model's top logits, so no argmax flips."""
    arrivals: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for step, rid, prompt, max_tokens in BATCH:
        arrivals.setdefault(step, []).append((rid, greedy_request(prompt, max_tokens)))
    together = drive(Engine(loaded), arrivals)
    assert max(len(r) for r in together.running) >= 4
    for _step, rid, prompt, max_tokens in BATCH:
        alone = drive(Engine(loaded), {0: [(rid, greedy_request(prompt, max_tokens))]})
        assert together.tokens(rid) == alone.tokens(rid), rid
        assert together.text(rid) == alone.text(rid)
        check_stream(together.records[rid], 1)


def test_cancel_leaves_the_others_unchanged(loaded: LoadedModel) -> None:
    def arrivals(with_victim: bool) -> dict[int, list[tuple[str, dict[str, Any]]]]:
        first = [("a", seeded("héllo", n=1)), ("c", greedy_request("x", 25))]
        victim = [("v", seeded("victim", max_tokens=50))] if with_victim else []
        return {0: first + victim}

    without = drive(Engine(loaded), arrivals(False))
    cancelled = drive(Engine(loaded), arrivals(True), aborts={4: ["v"]})
    for rid in ("a", "c"):
        assert cancelled.tokens(rid) == without.tokens(rid)
        assert cancelled.text(rid) == without.text(rid)
    records = cancelled.records["v"]
    check_stream(records, 2)
    assert [r.finish_reason for r in cancelled.aborted["v"]] == ["cancelled", "cancelled"]
    assert cancelled.aborted["v"][-1] is records[-1]
    assert all(len(cancelled.tokens("v", i)) < 50 for i in range(2))


def test_max_running_and_fifo_admission(loaded: LoadedModel) -> None:
    engine = Engine(loaded, Limits(max_running=2))
    lengths = {"r0": 6, "r1": 3, "r2": 8, "r3": 2, "r4": 4}
    trace = drive(engine, {0: [(rid, greedy_request(rid, m)) for rid, m in lengths.items()]})
    assert max(len(r) for r in trace.running) == 2
    starts = [trace.first_step(rid) for rid in lengths]
    assert starts == sorted(starts), "admitted in arrival order"
    for rid, m in lengths.items():
        assert len(trace.tokens(rid)) == m


def test_a_request_that_does_not_fit_blocks_the_ones_behind_it(loaded: LoadedModel) -> None:
    engine = Engine(loaded, Limits(max_running=8, max_batch_rows=3))
    trace = drive(
        engine,
        {
            0: [
                ("wide", seeded("a", n=2, max_tokens=6)),  # 2 of 3 rows
                ("wider", seeded("b", n=3, max_tokens=3)),  # needs 3 rows: waits for "wide"
                ("small", seeded("c", n=1, max_tokens=3)),  # would fit beside "wide", must not jump ahead
            ]
        },
    )
    assert trace.first_step("wider") > trace.first_step("wide")
    assert trace.first_step("small") >= trace.first_step("wider")


def test_max_queued_overflow_raises(loaded: LoadedModel) -> None:
    engine = Engine(loaded, Limits(max_queued=2))
    config = GenerationConfig(max_tokens=2)
    engine.add("a", prompt="a", config=config)
    engine.add("b", prompt="b", config=config)
    with pytest.raises(EngineFull):
        engine.add("c", prompt="c", config=config)
    engine.step()  # admits the waiting ones, so the queue has room again
    engine.add("c", prompt="c", config=config)


def test_stream_interval_coalesces_records(loaded: LoadedModel) -> None:
    request = {"prompt": PROMPT, "config": GenerationConfig(max_tokens=30, temperature=0, ignore_eos=True, n=2)}
    every = drive(Engine(loaded), {0: [("r", request)]})
    coalesced = drive(Engine(loaded, stream_interval=4), {0: [("r", request)]})
    assert len(coalesced.records["r"]) < len(every.records["r"]) / 2
    # The first text goes out as soon as it exists (the first token may be half a character).
    assert coalesced.steps["r"][0] == every.steps["r"][0]
    check_stream(coalesced.records["r"], 2)
    for index in range(2):
        assert coalesced.tokens("r", index) == every.tokens("r", index)
        assert coalesced.text("r", index) == every.text("r", index)
