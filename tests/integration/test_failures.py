"""Requests the worker cannot serve end their stream with an error, and the worker goes on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer import GenerationFailed, StreamReader
from producer import Producer
from tests.support.broken_model import POISON, build_broken_model
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def broken_stack(
    server_factory: object, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Producer, StreamReader]]:
    model = build_broken_model(tiny_model_dir, tmp_path_factory.mktemp("broken") / "model")
    url = server_factory()  # type: ignore[operator]
    with WorkerProcess(
        redis_url=url, model=str(model), extra_args=["--concurrency", "4", "--threads", "1"]
    ).wait_ready():
        producer, reader = Producer(url), StreamReader(url)
        yield producer, reader
        producer.close()
        reader.close()


def test_model_error_fails_only_that_request(broken_stack: tuple[Producer, StreamReader]) -> None:
    producer, reader = broken_stack
    healthy = producer.submit("a healthy neighbour", max_tokens=40, ignore_eos=True, temperature=0)
    poisoned = producer.submit(f"x {POISON} y", max_tokens=40, ignore_eos=True, n=2)
    with pytest.raises(GenerationFailed) as info:
        list(reader.stream(poisoned, timeout_s=60))
    assert info.value.error_type == "model_error"
    failed = info.value.result
    assert failed is not None and failed.finish_reasons == ["error", "error"]
    assert failed.usage is not None  # the stream still ended with its last record

    ok = reader.result(healthy, timeout_s=60)
    assert ok.finish_reasons == ["length"] and ok.usage is not None and ok.usage.completion_tokens == 40
    after = reader.result(producer.submit("and the next one", max_tokens=5, ignore_eos=True), timeout_s=60)
    assert after.finish_reasons == ["length"]


def test_failed_stream_records(broken_stack: tuple[Producer, StreamReader]) -> None:
    producer, reader = broken_stack
    rid = producer.submit(POISON, max_tokens=5)
    records = []
    with pytest.raises(GenerationFailed):
        for r in reader.stream(rid, timeout_s=60):
            records.append(r)
    last = records[-1]
    assert last.finish_reason == "error" and last.error is not None and last.usage is not None
    assert last.error.type == "model_error" and "non-finite" in last.error.message
