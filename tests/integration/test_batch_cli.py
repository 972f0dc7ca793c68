"""``tokenrelay batch`` against a real server and worker: output order, detach, Ctrl-C, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from schemas import keys
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def write_input(path: Path, lines: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def line(i: int, max_tokens: int, chat: bool = True) -> dict[str, object]:
    body: dict[str, object] = {"max_tokens": max_tokens, "temperature": 0, "ignore_eos": True}
    if chat:
        body["messages"] = [{"role": "user", "content": f"question {i}"}]
    else:
        body["prompt"] = f"prompt {i}"
    url = "/v1/chat/completions" if chat else "/v1/completions"
    return {"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body}


def cli(stack: Stack, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "TOKENRELAY_REDIS_URL": stack.url, "TOKENRELAY_BROKER_URL": stack.url}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "batch", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(stack: Stack, *args: str) -> tuple[int, str, str]:
    proc = cli(stack, *args)
    out, err = proc.communicate(timeout=180)
    return proc.returncode, out, err


def item_ids(stack: Stack, bid: str) -> dict[int, str]:
    raw = stack.producer._redis.hgetall(keys.batch_items_key(bid))
    return {int(k): json.loads(v)["id"] for k, v in raw.items()}


def test_results_in_input_order(tiny_stack: Stack, tmp_path: Path) -> None:
    lines = [line(i, 3 + i % 4, chat=i % 3 != 0) for i in range(10)]
    out = tmp_path / "out.jsonl"
    code, _, err = run(tiny_stack, str(write_input(tmp_path / "in.jsonl", lines)), "--out", str(out))
    assert code == 0, err
    results = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(10)]
    for i, r in enumerate(results):
        body = r["response"]["body"]
        assert r["error"] is None and r["response"]["status_code"] == 200
        assert body["object"] == ("text_completion" if i % 3 == 0 else "chat.completion")
        assert body["usage"]["completion_tokens"] == 3 + i % 4
    assert "done" in err


def test_bad_line_names_it(tiny_stack: Stack, tmp_path: Path) -> None:
    bad = line(1, 4)
    bad["body"] = {**bad["body"], "logit_bias": {}}  # type: ignore[dict-item]
    code, _, err = run(tiny_stack, str(write_input(tmp_path / "in.jsonl", [line(0, 4), bad])))
    assert code == 2
    assert "line 2: body.logit_bias" in err


def test_detach_then_resume_sends_nothing_again(tiny_stack: Stack, tmp_path: Path) -> None:
    source = write_input(tmp_path / "in.jsonl", [line(i, 4) for i in range(6)])
    code, out, err = run(tiny_stack, str(source), "--detach")
    assert code == 0, err
    bid = out.strip()
    before = item_ids(tiny_stack, bid)
    code, out, err = run(tiny_stack, str(source), "--resume", bid)
    assert code == 0, err
    assert "sent again 0 of 6" in err
    assert item_ids(tiny_stack, bid) == before
    assert [json.loads(x)["response"]["request_id"] for x in out.splitlines()] == [before[i] for i in range(6)]


def test_ctrl_c_cancels_and_resume_sends_only_the_unfinished(tiny_stack: Stack, tmp_path: Path) -> None:
    lines = [line(i, 2) for i in range(3)] + [line(i, 2000) for i in range(3, 20)]
    source = write_input(tmp_path / "in.jsonl", lines)
    with cli(tiny_stack, str(source)) as proc:
        bid = wait_for_batch_id(proc)
        wait_finished(tiny_stack, bid, at_least=3)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "cancelled batch" in err
    progress = wait_settled(tiny_stack, bid)
    assert progress.cancelled > 0 and progress.status == "cancelled"
    before = item_ids(tiny_stack, bid)
    finished = {r.index for r in tiny_stack.reader.batch_results(bid, timeout_s=30) if r.status == "finished"}
    assert {0, 1, 2} <= finished

    shorter = [line(i, 2) for i in range(20)]  # the same custom ids; quicker this time
    code, out, err = run(tiny_stack, str(write_input(tmp_path / "in2.jsonl", shorter)), "--resume", bid)
    assert code == 0, err
    assert f"sent again {20 - len(finished)} of 20" in err
    after = item_ids(tiny_stack, bid)
    assert all(after[i] == before[i] for i in finished)
    assert all(after[i] != before[i] for i in set(range(20)) - finished)
    results = [json.loads(x) for x in out.splitlines()]
    assert [r["custom_id"] for r in results] == [f"req-{i}" for i in range(20)]
    assert all(r["error"] is None for r in results)


def wait_for_batch_id(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "batch <id>: N items (...)"
    assert first.startswith("batch "), first
    return first.split()[1].rstrip(":")


def wait_finished(stack: Stack, bid: str, at_least: int) -> None:
    deadline = time.monotonic() + 60
    while not stack.producer._redis.exists(keys.batch_meta_key(bid)):  # the id is printed first
        time.sleep(0.05)
    while stack.reader.batch(bid).done < at_least:
        assert time.monotonic() < deadline
        time.sleep(0.1)


def wait_settled(stack: Stack, bid: str) -> object:
    deadline = time.monotonic() + 60
    while not (progress := stack.reader.batch(bid)).complete:
        assert time.monotonic() < deadline, progress
        time.sleep(0.2)
    return progress
