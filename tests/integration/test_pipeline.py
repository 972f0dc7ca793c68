"""The whole path for real: producer → Celery → worker → Redis Streams → consumer."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from consumer import RequestNotFound
from schemas import Record
from tests.integration.conftest import Stack
from tests.support.reference import reference_text

pytestmark = pytest.mark.integration


def test_greedy_tokens_equal_in_process_generate(smol_stack: Stack, smollm2_dir: object) -> None:
    prompt = "The three primary colors are"
    rid = smol_stack.producer.submit(prompt, max_tokens=32, temperature=0, ignore_eos=True)
    records = list(smol_stack.reader.stream(rid, timeout_s=120))
    streamed = [t for r in records for t in r.token_ids]

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    ids = tok.encode(prompt)
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            max_new_tokens=32,
            do_sample=False,
            pad_token_id=tok.eos_token_id,
        )
    reference = out[0, len(ids) :].tolist()
    assert streamed == reference
    assert "".join(r.text for r in records) == tok.decode(reference, skip_special_tokens=True)
    assert records[-1].finish_reason == "length" and records[-1].usage is not None
    assert records[-1].usage.completion_tokens == 32
    assert [r.seq for r in records] == list(range(len(records)))
    assert len(records) > 10  # streamed token by token, not in one lump


def _read_all(stack: Stack, rid: str) -> list[Record]:
    return list(stack.reader.stream(rid, timeout_s=60))


def test_sync_async_second_and_late_readers_agree(tiny_stack: Stack, tiny_model_dir: object) -> None:
    rid = tiny_stack.producer.submit("héllo wörld 日本", max_tokens=60, temperature=0.8, seed=7, ignore_eos=True)
    results: dict[str, list[Record]] = {}
    second = threading.Thread(target=lambda: results.__setitem__("second", _read_all(tiny_stack, rid)))
    second.start()

    async def read_async() -> list[Record]:
        async with tiny_stack.async_reader() as reader:
            return [r async for r in reader.stream(rid, timeout_s=60)]

    results["async"] = asyncio.run(read_async())
    results["sync"] = _read_all(tiny_stack, rid)
    second.join()
    results["late"] = _read_all(tiny_stack, rid)  # after the stream ended, from the start
    first = results["sync"]
    assert first[-1].usage is not None
    for name, recs in results.items():
        assert recs == first, name
        assert [r.entry_id for r in recs] == [r.entry_id for r in first], name
    # The random model emits stray bytes too: U+FFFD may appear where the bytes are invalid,
    # exactly as in a one-shot decode, but never from a character split across tokens.
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    expected, _ = reference_text(tok, [t for r in first for t in r.token_ids])
    assert "".join(r.text for r in first) == expected


def test_resume_from_an_entry_id(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("abc", max_tokens=20, temperature=0, ignore_eos=True)
    records = _read_all(tiny_stack, rid)
    cursor = records[4].entry_id
    assert cursor is not None
    assert list(tiny_stack.reader.stream(rid, after=cursor, timeout_s=10)) == records[5:]


def test_cancel_mid_stream(tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("cancel me", max_tokens=500, temperature=1.0, ignore_eos=True)
    seen: list[Record] = []
    for record in tiny_stack.reader.stream(rid, timeout_s=60):
        seen.append(record)
        if len(seen) == 3:
            tiny_stack.producer.cancel(rid)
    last = seen[-1]
    assert last.finish_reason == "cancelled"
    assert last.usage is not None and last.usage.completion_tokens < 500


def test_cancel_while_queued_never_decodes(server_factory: object, tiny_model_dir: object) -> None:
    # No worker yet: the request waits on the broker, gets cancelled, then a worker starts.
    from consumer import StreamReader
    from producer import Producer
    from workers.launcher import WorkerProcess

    url = server_factory()  # type: ignore[operator]
    producer, reader = Producer(url), StreamReader(url)
    rid = producer.submit("never runs", max_tokens=50)
    producer.cancel(rid)
    with WorkerProcess(redis_url=url, model=str(tiny_model_dir), extra_args=["--threads", "1"]).wait_ready():
        records = list(reader.stream(rid, timeout_s=60))
    assert len(records) == 1
    assert records[0].finish_reason == "cancelled"
    assert records[0].token_ids == [] and records[0].usage is not None
    assert records[0].usage.completion_tokens == 0


def test_unknown_request_id(tiny_stack: Stack) -> None:
    with pytest.raises(RequestNotFound):
        list(tiny_stack.reader.stream("0123456789abcdef0123456789abcdef", timeout_s=5))


def test_many_requests_at_once(tiny_stack: Stack) -> None:
    started = time.monotonic()
    rids = [tiny_stack.producer.submit(f"request {i}", max_tokens=30, ignore_eos=True, seed=i) for i in range(12)]
    results = [tiny_stack.reader.result(rid, timeout_s=120) for rid in rids]
    assert all(r.finish_reasons == ["length"] for r in results)
    assert all(r.usage is not None and r.usage.completion_tokens == 30 for r in results)
    assert time.monotonic() - started < 120
