"""Celery's own command line against tokenrelay's apps: ``celery -A workers.celery_app worker``
serves requests, ``celery -A broker.app inspect ping`` sees it, and ``celery -A broker.app
worker`` refuses to start (it has no engine and would drop generation tasks)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from consumer import StreamReader
from producer import Producer

pytestmark = pytest.mark.integration

CELERY = [sys.executable, "-m", "celery"]
ROOT = Path(__file__).resolve().parents[2]


def env_for(url: str, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOKENRELAY_")}
    return clean | {"TOKENRELAY_REDIS_URL": url, "HF_HUB_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def url(server_factory: object) -> str:
    return str(server_factory())  # type: ignore[operator]


@pytest.fixture(scope="module")
def celery_worker(url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    log = tmp_path_factory.mktemp("celery-worker") / "worker.log"
    env = env_for(url, TOKENRELAY_MODEL=str(tiny_model_dir), TOKENRELAY_TORCH_THREADS="1", TOKENRELAY_TASK_EVENTS="1")
    argv = [*CELERY, "-A", "workers.celery_app", "worker", "-c", "2", "--hostname", "celery-test@%h", "-l", "INFO"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield log
    finally:
        proc.terminate()
        proc.wait(30)


def test_celery_started_worker_serves_requests(url: str, celery_worker: Path) -> None:
    with Producer(url) as producer, StreamReader(url) as reader:
        rid = producer.submit("Hello", max_tokens=5, ignore_eos=True, temperature=0)
        try:
            for _ in reader.stream(rid, timeout_s=120):
                pass
        except Exception:
            print(celery_worker.read_text(errors="replace")[-4000:])
            raise
        result = reader.result(rid)
    assert result.finish_reasons == ["length"] and result.usage is not None
    assert result.usage.completion_tokens == 5


def test_inspect_finds_the_monitoring_app(url: str, celery_worker: Path) -> None:
    test_celery_started_worker_serves_requests(url, celery_worker)  # the worker is up by now
    out = subprocess.run(
        [*CELERY, "-A", "broker.app", "inspect", "ping", "--timeout", "5"],
        cwd=ROOT,
        env=env_for(url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "celery-test@" in out.stdout and "pong" in out.stdout


def test_monitoring_app_refuses_to_run_a_worker(url: str) -> None:
    out = subprocess.run(
        [*CELERY, "-A", "broker.app", "worker", "-P", "threads", "-c", "1"],
        cwd=ROOT,
        env=env_for(url),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "workers.celery_app" in out.stdout + out.stderr
