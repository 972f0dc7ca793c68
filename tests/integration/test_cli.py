"""The command line end to end: an embedded valkey-server, a real worker child serving the tiny
model, and ``python -m cli`` run as a subprocess, as a user would.

The server and the worker start once per module.  If either cannot start the fixtures raise:
these tests fail, they never skip.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cli.embedded import embedded_redis
from workers.launcher import WorkerProcess

pytestmark = pytest.mark.integration

# The machine's TOKENRELAY_* settings must not redirect the subprocesses away from our server.
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")} | {"HF_HUB_OFFLINE": "1"}


SMOL = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with embedded_redis() as server_url:
        yield server_url


@pytest.fixture(scope="module")
def worker(url: str, tiny_model_dir: Path) -> Iterator[WorkerProcess]:
    proc = WorkerProcess(
        redis_url=url,
        broker_url=url,
        model=str(tiny_model_dir),
        extra_args=["--concurrency", "4", "--threads", "1"],
        env=CLEAN_ENV,
    )
    with proc:
        proc.wait_ready(180)
        yield proc


def cli(url: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m cli COMMAND ARGS --redis-url URL``."""
    cmd = [sys.executable, "-m", "cli", *argv, "--redis-url", url]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV)


def explain(proc: subprocess.CompletedProcess[str], worker: WorkerProcess) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}\nworker log:\n{worker.log_tail()}"


def test_generate_prints_text(url: str, worker: WorkerProcess) -> None:
    proc = cli(url, "generate", "Hello there", "--max-tokens", "12", "--ignore-eos", "--temperature", "0")
    assert proc.returncode == 0, explain(proc, worker)
    assert proc.stdout.strip(), explain(proc, worker)
    assert "12 tokens" in proc.stderr and "finish length" in proc.stderr


def test_generate_chat_with_several_choices(url: str, worker: WorkerProcess) -> None:
    proc = cli(
        url, "generate", "Hi", "--system", "Be brief.", "-n", "2", "--max-tokens", "6", "--ignore-eos", "--seed", "1"
    )
    assert proc.returncode == 0, explain(proc, worker)
    assert proc.stdout.startswith("system: Be brief.\nuser: Hi\nassistant: [0] "), explain(proc, worker)
    assert "\n[1] " in proc.stdout


def test_generate_json_lines(url: str, worker: WorkerProcess) -> None:
    proc = cli(
        url, "generate", "Hello", "--max-tokens", "8", "--ignore-eos", "--json", "--logprobs", "--top-logprobs", "2"
    )
    assert proc.returncode == 0, explain(proc, worker)
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["seq"] for r in lines] == list(range(len(lines)))
    assert lines[-1]["usage"]["completion_tokens"] == 8
    assert all(r["usage"] is None for r in lines[:-1])
    assert lines[-1]["entry_id"] == f"{len(lines)}-0"
    tokens = [lp for r in lines for lp in (r["logprobs"] or [])]
    assert len(tokens) == 8 and all(len(lp["top_logprobs"]) == 2 for lp in tokens)


def test_submit_then_tail(url: str, worker: WorkerProcess) -> None:
    submitted = cli(url, "submit", "Once upon a time", "--max-tokens", "10", "--ignore-eos", "--temperature", "0")
    assert submitted.returncode == 0, explain(submitted, worker)
    request_id = submitted.stdout.strip()
    assert len(request_id) == 32 and "\n" not in request_id

    tailed = cli(url, "tail", request_id, "--json")
    assert tailed.returncode == 0, explain(tailed, worker)
    records = [json.loads(line) for line in tailed.stdout.splitlines()]
    assert records[-1]["usage"]["completion_tokens"] == 10

    # Resuming after the first entry yields the rest, and the text mode joins the same text.
    resumed = cli(url, "tail", request_id, "--json", "--after", records[0]["entry_id"])
    assert [json.loads(line) for line in resumed.stdout.splitlines()] == records[1:]
    text = cli(url, "tail", request_id)
    assert text.stdout.rstrip("\n") == "".join(r["text"] for r in records).rstrip("\n")


def test_cancel_ends_tail_with_cancelled(url: str, worker: WorkerProcess, smollm2_dir: Path) -> None:
    # SmolLM2, not the tiny model: the tiny one runs into its 512-token context in about half
    # a second, about as long as the `tokenrelay cancel` process takes to start, so the cancel
    # could land after the end.  Its own queue (--model) keeps the tiny worker out of it.
    smol = WorkerProcess(redis_url=url, broker_url=url, model=SMOL, extra_args=["--threads", "1"], env=CLEAN_ENV)
    with smol:
        smol.wait_ready(180)
        _cancel_while_tailing(url, smol)


def _cancel_while_tailing(url: str, worker: WorkerProcess) -> None:
    submitted = cli(url, "submit", "Go on forever", "--model", SMOL, "--max-tokens", "5000", "--ignore-eos")
    assert submitted.returncode == 0, explain(submitted, worker)
    request_id = submitted.stdout.strip()
    cmd = [sys.executable, "-m", "cli", "tail", request_id, "--json", "--redis-url", url]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV) as tail:
        assert tail.stdout is not None
        first = tail.stdout.readline()  # the request is running: a record came
        assert json.loads(first)["seq"] == 0
        cancelled = cli(url, "cancel", request_id)
        assert cancelled.returncode == 0, explain(cancelled, worker)
        rest, err = tail.communicate(timeout=60)
    assert tail.returncode == 0, f"{err}\n{worker.log_tail()}"
    records = [json.loads(first), *(json.loads(line) for line in rest.splitlines())]
    assert records[-1]["usage"] is not None
    assert "cancelled" in [r["finish_reason"] for r in records], worker.log_tail()
    assert records[-1]["usage"]["completion_tokens"] < 5000


def test_ctrl_c_cancels_generate(url: str, worker: WorkerProcess) -> None:
    cmd = [
        sys.executable,
        "-m",
        "cli",
        "generate",
        "Talk",
        "--max-tokens",
        "5000",
        "--ignore-eos",
        "--json",
        "--redis-url",
        url,
    ]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV) as gen:
        assert gen.stdout is not None
        cursor = json.loads(gen.stdout.readline())["entry_id"]  # streaming has begun
        gen.send_signal(signal.SIGINT)
        _out, err = gen.communicate(timeout=60)
    assert gen.returncode == 130, err
    assert "cancelled" in err
    request_id = err.split("request ", 1)[1].split()[0]
    tailed = cli(url, "tail", request_id, "--json", "--after", cursor)
    assert tailed.returncode == 0, explain(tailed, worker)
    finish = [json.loads(line)["finish_reason"] for line in tailed.stdout.splitlines()]
    assert "cancelled" in finish


def test_unknown_request_and_timeout(url: str, worker: WorkerProcess) -> None:
    unknown = cli(url, "tail", "no-such-request")
    assert unknown.returncode == 1 and "not found" in unknown.stderr
    # A queue nobody consumes: no worker ever starts it, so the reader gives up with exit 2.
    start = time.monotonic()
    stuck = cli(url, "generate", "hi", "--queue", "nobody-home", "--timeout", "0.5", "--queue-timeout", "1.5")
    assert stuck.returncode == 2 and "still queued" in stuck.stderr, stuck.stderr
    assert time.monotonic() - start < 30


def test_unreachable_redis_exits_3(worker: WorkerProcess) -> None:
    proc = cli("redis://127.0.0.1:1/0", "cancel", "abc")
    assert proc.returncode == 3 and proc.stderr.startswith("error: "), proc.stderr


def test_worker_with_an_unknown_model_exits_2_in_one_line(url: str) -> None:
    proc = cli(url, "worker", "--model", "/no/such/model")
    assert proc.returncode == 2, proc.stderr
    assert "/no/such/model" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_worker_with_a_bad_dtype_variable_exits_2_naming_it(url: str) -> None:
    cmd = [sys.executable, "-m", "cli", "worker", "--redis-url", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=CLEAN_ENV | {"TOKENRELAY_DTYPE": "bf16"})
    assert proc.returncode == 2, proc.stderr
    assert "TOKENRELAY_DTYPE" in proc.stderr and "'bf16'" in proc.stderr and "Traceback" not in proc.stderr


def test_worker_refuses_a_step_slowdown_it_would_ignore_or_cannot_meet(url: str) -> None:
    """``--step-slowdown`` sizes auto chunks: with a fixed chunk, or at 1 or below, the worker
    exits 2 before it starts, saying why."""
    fixed = cli(url, "worker", "--prefill-chunk", "32", "--step-slowdown", "1.4", timeout=60)
    assert fixed.returncode == 2, fixed.stderr
    assert "--step-slowdown sizes the chunks of --prefill-chunk auto" in fixed.stderr, fixed.stderr
    one = cli(url, "worker", "--prefill-chunk", "auto", "--step-slowdown", "1", timeout=60)
    assert one.returncode == 2 and "step_slowdown must be a finite number > 1, got 1.0" in one.stderr, one.stderr
    assert "Traceback" not in fixed.stderr + one.stderr


def test_a_bfloat16_worker_serves_requests(url: str, tiny_model_dir: Path) -> None:
    """``--dtype bfloat16``: the model is loaded in bf16 and streams like any other."""
    queue = "tokenrelay-bf16"
    args = ["--dtype", "bfloat16", "--threads", "1", "--queue", queue]
    with WorkerProcess(redis_url=url, broker_url=url, model=str(tiny_model_dir), extra_args=args, env=CLEAN_ENV) as w:
        w.wait_ready(180)
        assert "(torch.bfloat16)" in w.log_tail(100)
        proc = cli(url, "generate", "bf16", "--max-tokens", "8", "--ignore-eos", "--json", "--queue", queue)
        assert proc.returncode == 0, explain(proc, w)
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        assert sum(len(r["token_ids"]) for r in records) == 8 and records[-1]["usage"]["completion_tokens"] == 8


@pytest.mark.slow
def test_demo_end_to_end() -> None:
    """The real thing: embedded server, SmolLM2, worker, producer, reader; nothing else running."""
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--max-tokens", "16"],
        capture_output=True,
        text=True,
        timeout=280,
        env=CLEAN_ENV,
    )
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    reply = proc.stdout.split("assistant: ", 1)[1]
    assert reply.strip(), proc.stdout
    assert "16 tokens" in proc.stderr
