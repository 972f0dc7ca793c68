"""A real gateway for tests: ``tokenrelay serve`` as a child process on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")} | {"HF_HUB_OFFLINE": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def gateway_process(
    redis_url: str, broker_url: str | None = None, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> Iterator[str]:
    """Yields the base URL once ``/healthz`` answers; the process is stopped afterwards."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="tokenrelay-gateway-")) / "gateway.log"
    child_env = {**CLEAN_ENV, "TOKENRELAY_REDIS_URL": redis_url, "TOKENRELAY_BROKER_URL": broker_url or redis_url,
                 **(env or {})}  # fmt: skip
    args = [sys.executable, "-m", "cli", "serve", "--port", str(port), "--log-level", "warning", *(extra or [])]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=child_env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_healthy(base: str, proc: subprocess.Popen[bytes], log: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"gateway not healthy after {timeout_s}s:\n{log.read_text(errors='replace')}")


def wait_for_worker(base: str, timeout_s: float = 30.0) -> str:
    """The model a live worker serves, from ``/v1/models`` (its heartbeat)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        data = httpx.get(base + "/v1/models", timeout=5).json().get("data", [])
        if data:
            return str(data[0]["id"])
        time.sleep(0.2)
    raise RuntimeError(f"no worker heartbeat within {timeout_s}s")
