"""The output processor (workers/engine/output.py) driven by scripted token streams.

No model runs here: each test plays the engine core, handing the processor the token ids a
core would have sampled, and checks the records that come out with SmolLM2's real tokenizer
(byte-level BPE: CJK characters and emoji span several tokens, " STOP" splits as " ST" "OP").
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from schemas.config import GenerationConfig
from schemas.records import ErrorInfo, Record
from workers.engine.output import CoreStep, Finished, OutputProcessor, Resume, Sampled
from workers.engine.token_bytes import build_token_bytes
from workers.resume import resume_state

RID = "req-1"
CJK = "日本語のテキスト"
PROMPT = [19556, 905, 30]  # "Hello world."


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> tuple[Any, list[bytes]]:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return tok, build_token_bytes(tok)


def processor(smol: tuple[Any, list[bytes]], *, stream_interval: int = 1, max_context: int = 2048) -> OutputProcessor:
    tok, tb = smol
    return OutputProcessor(tok, tb, [tok.eos_token_id], max_context, stream_interval)


def ids(smol: tuple[Any, list[bytes]], text: str) -> list[int]:
    return [int(i) for i in smol[0].encode(text)]


class Script:
    """Plays an engine core: feeds one token per unfinished choice per step, as the core would
    (a finished choice's row is gone, so nothing more is fed for it)."""

    def __init__(self, proc: OutputProcessor, rid: str = RID, logprobs: bool = False) -> None:
        self.proc, self.rid, self.logprobs = proc, rid, logprobs
        self.records: list[Record] = []
        self.finished_at: dict[int, int] = {}  # choice index -> step at which it finished
        self.steps = 0

    def step(self, rows: Sequence[tuple[int, int]], failed: Sequence[tuple[str, ErrorInfo]] = ()) -> list[Finished]:
        tokens = [(self.rid, index, self._draw(token)) for index, token in rows if index not in self.finished_at]
        out: list[tuple[str, Record]] = []
        finished = self.proc.process(CoreStep(tokens, time.time(), failed=list(failed)), self.steps, out)
        assert all(rid == self.rid for rid, _r in out)
        self.records.extend(r for _rid, r in out)
        for _rid, index in finished:
            self.finished_at[index] = self.steps
        self.steps += 1
        return finished

    def play(self, streams: dict[int, Sequence[int]]) -> None:
        """Each choice's token ids, one per step, until it finishes or its ids run out."""
        for s in range(max(len(v) for v in streams.values())):
            self.step([(i, v[s]) for i, v in streams.items() if s < len(v)])

    def _draw(self, token: int) -> Sampled:
        if not self.logprobs:
            return Sampled(token, None, None)
        return Sampled(token, -0.5, [(token, -0.5), (0, -2.0)])


def text_of(records: Sequence[Record], index: int = 0) -> str:
    return "".join(r.text for r in records if r.index == index)


def ids_of(records: Sequence[Record], index: int = 0) -> list[int]:
    return [t for r in records if r.index == index for t in r.token_ids]


def check_stream(records: Sequence[Record], first_seq: int = 0) -> None:
    """seq first..N-1 without gaps; usage on the very last record only; nothing after it."""
    assert [r.seq for r in records] == list(range(first_seq, first_seq + len(records)))
    assert records[-1].usage is not None
    assert all(r.usage is None for r in records[:-1])


# -- text -------------------------------------------------------------------------------------


def test_utf8_hold_back_across_tokens(smol: Any) -> None:
    stream = ids(smol, CJK)
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=len(stream), ignore_eos=True))
    run = Script(proc)
    run.play({0: stream})
    check_stream(run.records)
    # "日" is two tokens: nothing comes out after the first, both ids with the character.
    assert (run.records[0].text, run.records[0].token_ids) == ("日", stream[:2])
    assert all("\ufffd" not in r.text and r.text for r in run.records)
    assert text_of(run.records) == CJK
    assert ids_of(run.records) == stream
    assert run.records[-1].finish_reason == "length"
    assert run.finished_at == {0: len(stream) - 1}
    assert RID not in proc  # forgotten once its last record is out


@pytest.mark.parametrize(("include", "expected"), [(False, "abc"), (True, "abc STOP")])
def test_stop_string_split_across_tokens(smol: Any, include: bool, expected: str) -> None:
    stream = ids(smol, "abc STOP def and more")
    assert [smol[1][i] for i in stream[1:3]] == [b" ST", b"OP"]
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=50, stop=(" STOP",), include_stop_str_in_output=include))
    run = Script(proc)
    run.play({0: stream})
    check_stream(run.records)
    assert run.finished_at == {0: 2}  # the token that completes the match ends the choice
    assert text_of(run.records) == expected
    assert ids_of(run.records) == stream[:3]
    assert run.records[-1].finish_reason == "stop"
    # " ST" could begin " STOP": it was held back, never streamed before the match.
    assert run.records[0].text == "abc" and run.records[0].token_ids == stream[:1]


def test_stop_string_prefix_released_when_no_match(smol: Any) -> None:
    stream = ids(smol, "abc STOP def")
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=3, stop=(" STOPPED",)))
    run = Script(proc)
    run.play({0: stream})
    assert text_of(run.records) == "abc STOP"  # the held-back " STOP" goes out at the end
    assert run.records[-1].finish_reason == "length"
    assert ids_of(run.records) == stream[:3]


def test_stop_token_ids_and_eos(smol: Any) -> None:
    stream = ids(smol, "Hello world. The end")  # ..., " The", " end"
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=50, stop_token_ids=(stream[3],)))
    run = Script(proc)
    run.play({0: stream})
    assert text_of(run.records) == "Hello world."  # the stop token's id is reported, its text never
    assert ids_of(run.records) == stream[:4]
    assert run.records[-1].finish_reason == "stop"

    eos = smol[0].eos_token_id
    for ignore_eos, reason, count in [(False, "stop", 2), (True, "length", 3)]:
        proc = processor(smol)
        proc.add(RID, PROMPT, GenerationConfig(max_tokens=3, ignore_eos=ignore_eos))
        run = Script(proc)
        run.play({0: [stream[0], eos, stream[1]]})
        assert run.records[-1].finish_reason == reason
        assert len(ids_of(run.records)) == count
        assert run.records[-1].usage is not None and run.records[-1].usage.completion_tokens == count


def test_length_by_max_tokens_and_by_context(smol: Any) -> None:
    stream = ids(smol, "Hello world. The end")
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=2))
    run = Script(proc)
    run.play({0: stream})
    assert (text_of(run.records), run.records[-1].finish_reason) == ("Hello world", "length")

    proc = processor(smol, max_context=len(PROMPT) + 3)  # room for 3 tokens only
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=50))
    run = Script(proc)
    run.play({0: stream})
    assert run.finished_at == {0: 2}
    assert run.records[-1].finish_reason == "length"
    assert run.records[-1].usage is not None and run.records[-1].usage.total_tokens == len(PROMPT) + 3


def test_n_choices_finish_at_different_times(smol: Any) -> None:
    eos = smol[0].eos_token_id
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(n=3, max_tokens=4))
    run = Script(proc)
    run.play({0: [905, eos], 1: ids(smol, "Hello world. The end"), 2: [30, 378, eos]})
    assert run.finished_at == {0: 1, 2: 2, 1: 3}
    check_stream(run.records)  # usage only on the very last record of the request
    finals = {r.index: r for r in run.records if r.finish_reason is not None}
    assert {i: r.finish_reason for i, r in finals.items()} == {0: "stop", 1: "length", 2: "stop"}
    assert run.records[-1].index == 1
    usage = run.records[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 2 + 4 + 3)
    assert [text_of(run.records, i) for i in range(3)] == [" world", "Hello world. The", ". The"]


def test_stream_interval_batches_records(smol: Any) -> None:
    stream = ids(smol, "Hello world. The end")
    proc = processor(smol, stream_interval=2)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=5, ignore_eos=True))
    run = Script(proc)
    run.play({0: stream})
    # Step 0: the first text goes out at once; then every 2nd step; the last one always.
    assert [r.token_ids for r in run.records] == [stream[:1], stream[1:3], stream[3:5]]
    check_stream(run.records)


def test_logprobs_with_bytes(smol: Any) -> None:
    stream = ids(smol, CJK)[:3]  # "日" (two tokens) + "本"
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=3, logprobs=True, top_logprobs=2, ignore_eos=True))
    run = Script(proc, logprobs=True)
    run.play({0: stream})
    first = run.records[0]
    assert first.text == "日" and first.logprobs is not None
    # One entry per token of the record, travelling with its token through the hold-back.
    assert [lp.bytes for lp in first.logprobs] == [[0xE6, 0x97], [0xA5]]
    assert [lp.token for lp in first.logprobs] == ["\\xe6\\x97", "\\xa5"]
    assert first.logprobs[0].logprob == -0.5
    assert [t.bytes for t in first.logprobs[0].top_logprobs] == [[0xE6, 0x97], list(smol[1][0])]
    all_lps = [lp for r in run.records for lp in (r.logprobs or [])]
    assert len(all_lps) == 3 and b"".join(bytes(lp.bytes) for lp in all_lps).decode() == "日本"

    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=3, ignore_eos=True))
    run = Script(proc)
    run.play({0: stream})
    assert all(r.logprobs is None for r in run.records)


# -- ends from outside the tokens ------------------------------------------------------------


def test_end_flushes_held_back_text_and_carries_usage(smol: Any) -> None:
    stream = ids(smol, "abc STOP")
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(n=2, max_tokens=50, stop=(" STOPPED",)))
    run = Script(proc)
    run.play({0: stream[:2], 1: stream[:1]})  # choice 0 holds " ST" back
    out = proc.end(RID, "cancelled")
    assert [(r.index, r.finish_reason) for _rid, r in out] == [(0, "cancelled"), (1, "cancelled")]
    records = run.records + [r for _rid, r in out]
    check_stream(records)
    assert text_of(records, 0) == "abc ST" and ids_of(records, 0) == stream[:2]
    assert RID not in proc
    assert proc.end(RID, "cancelled") == []  # ended once only


def test_core_failure_ends_request_with_error(smol: Any) -> None:
    proc = processor(smol)
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=5))
    run = Script(proc)
    run.step([(0, 19556)])
    error = ErrorInfo("model_error", "non-finite logits")
    run.step([], failed=[(RID, error)])
    assert run.records[-1].finish_reason == "error" and run.records[-1].error == error
    check_stream(run.records)


def test_reject_without_prompt(smol: Any) -> None:
    proc = processor(smol)
    out = proc.reject(RID, GenerationConfig(n=2), "error", ErrorInfo("unknown_model", "no such model"))
    records = [r for _rid, r in out]
    assert [(r.index, r.finish_reason, r.error is not None) for r in records] == [
        (0, "error", True),
        (1, "error", True),
    ]
    check_stream(records)
    assert RID not in proc


# -- resume ------------------------------------------------------------------------------------


def full_run(smol: Any, config: GenerationConfig, streams: dict[int, Sequence[int]]) -> list[Record]:
    proc = processor(smol)
    proc.add(RID, PROMPT, config)
    run = Script(proc)
    run.play(streams)
    return run.records


@pytest.mark.parametrize("cut", [1, 2, 3, 4])
def test_resume_continues_without_repeating(smol: Any, cut: int) -> None:
    """A worker died after publishing ``cut`` records; the next one replays them and goes on
    from the tokens it did not publish (held-back ones are generated again)."""
    stream = ids(smol, CJK + " and STOP")
    config = GenerationConfig(max_tokens=len(stream), stop=(" STOP",))
    whole = full_run(smol, config, {0: stream})
    published = whole[:cut]
    resume = resume_state(published)
    assert resume is not None and resume.next_seq == cut

    proc = processor(smol)
    assert proc.add(RID, PROMPT, config, resume=resume) == []
    run = Script(proc)
    run.play({0: stream[len(ids_of(published)) :]})
    check_stream(run.records, first_seq=cut)
    records = published + run.records
    assert text_of(records) == text_of(whole) == CJK + " and"
    assert ids_of(records) == ids_of(whole)
    assert records[-1].finish_reason == "stop"
    usage, expected = records[-1].usage, whole[-1].usage
    assert usage is not None and expected is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, expected.completion_tokens)


def test_resume_with_a_choice_already_finished(smol: Any) -> None:
    eos = smol[0].eos_token_id
    config = GenerationConfig(n=2, max_tokens=4)
    streams: dict[int, Sequence[int]] = {0: [905, eos], 1: ids(smol, "Hello world. The end")}
    whole = full_run(smol, config, streams)
    cut = next(i for i, r in enumerate(whole) if r.index == 0 and r.finish_reason) + 1
    published = whole[:cut]
    resume = resume_state(published)
    assert resume is not None and resume.finished == {0: "stop"}

    proc = processor(smol)
    proc.add(RID, PROMPT, config, resume=resume)
    run = Script(proc)
    # The core runs only choice 1, from its first unpublished token.
    run.play({1: streams[1][len(ids_of(published, 1)) :]})
    assert all(r.index == 1 for r in run.records)
    check_stream(run.records, first_seq=cut)
    records = published + run.records
    assert [text_of(records, i) for i in range(2)] == [text_of(whole, i) for i in range(2)]
    assert [ids_of(records, i) for i in range(2)] == [ids_of(whole, i) for i in range(2)]
    usage = records[-1].usage
    assert usage is not None and usage.completion_tokens == 2 + 4


def test_resume_after_every_choice_finished(smol: Any) -> None:
    """The last choice's final record was published, the record with usage was not: only that
    one record is written, and the request is not kept."""
    config = GenerationConfig(n=2, max_tokens=2, ignore_eos=True)
    whole = full_run(smol, config, {0: [905, 30], 1: [378, 1112]})
    published = [*whole[:-1], dataclasses.replace(whole[-1], usage=None)]
    resume = resume_state(published)
    assert resume is not None
    assert (resume.next_seq, resume.tokens, resume.texts, resume.finished) == (
        len(whole),
        {0: [905, 30], 1: [378, 1112]},
        {0: " world.", 1: " The end"},
        {0: "length", 1: "length"},
    )
    proc = processor(smol)
    out = proc.add(RID, PROMPT, config, resume=resume)
    assert RID not in proc
    [(rid, record)] = out
    assert rid == RID and record.seq == whole[-1].seq + 1
    assert (record.text, record.token_ids, record.finish_reason) == ("", [], "length")
    assert record.usage is not None and record.usage.completion_tokens == 4


def test_reject_after_resume_ends_only_unfinished_choices(smol: Any) -> None:
    eos = smol[0].eos_token_id
    config = GenerationConfig(n=2, max_tokens=4)
    whole = full_run(smol, config, {0: [905, eos], 1: [19556, 905, 30, 378]})
    cut = next(i for i, r in enumerate(whole) if r.index == 0 and r.finish_reason) + 1
    resume = resume_state(whole[:cut])
    proc = processor(smol)
    out = [r for _rid, r in proc.reject(RID, config, "cancelled", resume=resume)]
    assert [(r.index, r.finish_reason, r.text) for r in out] == [(1, "cancelled", "")]
    check_stream(whole[:cut] + out)


# -- no torch ------------------------------------------------------------------------------------


def test_output_processor_imports_without_torch() -> None:
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any import of torch now fails\n"
        "from workers.engine.output import OutputProcessor, CoreStep, Resume, Sampled\n"
        "print(sorted(m for m in ('torch', 'transformers') if sys.modules.get(m) is not None))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"


def test_resume_built_by_hand(smol: Any) -> None:
    """Resume as the runner builds it: "日" published as seq 0; "本語" follows from seq 1."""
    stream = ids(smol, CJK)[:6]  # 日 本 語
    proc = processor(smol)
    resume = Resume(next_seq=1, tokens={0: stream[:2]}, texts={0: "日"}, finished={})
    proc.add(RID, PROMPT, GenerationConfig(max_tokens=6, ignore_eos=True), resume=resume)
    run = Script(proc)
    run.play({0: stream[2:]})
    check_stream(run.records, first_seq=1)
    assert text_of(run.records) == "本語" and ids_of(run.records) == stream[2:]
    usage = run.records[-1].usage
    assert usage is not None and usage.completion_tokens == 6
