"""The container healthcheck (``python -m cli.healthcheck READY_FILE``) against a real worker."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cli.healthcheck import check
from workers.launcher import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def redis_of_the_stack(monkeypatch: pytest.MonkeyPatch, tiny_stack: Stack) -> None:
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", tiny_stack.url)


def test_ready_worker_is_healthy(tiny_stack: Stack) -> None:
    env = {**os.environ, "TOKENRELAY_REDIS_URL": tiny_stack.url}
    out = subprocess.run(
        [sys.executable, "-m", "cli.healthcheck", tiny_stack.worker.ready_file], env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr


def test_missing_ready_file_is_unhealthy(tmp_path: Path) -> None:
    assert "not ready" in check(str(tmp_path / "ready"))


def test_another_pid_is_unhealthy(tiny_stack: Stack, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    ready.write_text(str(os.getpid()))  # this test process never beats
    assert "no fresh heartbeat" in check(str(ready))


def test_ready_file_older_than_the_worker_is_unhealthy(tiny_stack: Stack, tmp_path: Path) -> None:
    """A file left over from before a container restart (same host, same pid) does not count."""
    stale = tmp_path / "ready"
    shutil.copy(tiny_stack.worker.ready_file, stale)
    os.utime(stale, (1.0, 1.0))
    assert "no fresh heartbeat" in check(str(stale))


def test_unreachable_redis_is_unhealthy(tiny_stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from cli.healthcheck import main

    monkeypatch.setenv("TOKENRELAY_REDIS_URL", "redis://127.0.0.1:1/0")
    assert main([tiny_stack.worker.ready_file]) == 1
