"""rediss:// against a real TLS server with a password: the whole pipeline (producer, worker,
reader, Celery's broker on the same server) verifies the server's certificate against the CA
in the URL, refuses a server signed by another CA, and never shows the password."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from consumer import StreamReader
from producer import Producer
from schemas.errors import RelayConnectionError
from tests.support.tls_server import PASSWORD, TlsServer, binary
from workers.launcher import WorkerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(binary() is None, reason="no redis-server binary with TLS on this machine"),
]


@pytest.fixture(scope="module")
def tls() -> Iterator[TlsServer]:
    server = TlsServer()
    yield server
    server.stop()


def test_pipeline_over_tls_with_a_password(tls: TlsServer, tiny_model_dir: Path) -> None:
    url = tls.url()
    queue = f"tokenrelay-tls-{uuid.uuid4().hex[:8]}"
    with WorkerProcess(redis_url=url, broker_url=url, model=str(tiny_model_dir), extra_args=["--queue", queue]) as w:
        w.wait_ready()
        # Secrets travel in the environment, never on a command line that `ps` shows.
        assert PASSWORD not in " ".join(psutil.Process(w.pid).cmdline())
        producer, reader = Producer(url, url), StreamReader(url)
        result = reader.result(producer.submit("over TLS", max_tokens=8, ignore_eos=True, queue=queue), timeout_s=60)
        producer.close()
        reader.close()
    assert result.finish_reasons == ["length"] and result.usage is not None
    assert result.usage.completion_tokens == 8
    assert PASSWORD not in w.log_tail(400)


def test_a_server_signed_by_another_ca_is_refused(tls: TlsServer) -> None:
    reader = StreamReader(tls.url(ca="other.pem"))
    with pytest.raises(RelayConnectionError) as info:
        reader.result("0" * 32, timeout_s=5)
    assert "certificate verify failed" in str(info.value)
    assert PASSWORD not in str(info.value)


def test_a_wrong_password_is_a_clear_error(tls: TlsServer) -> None:
    producer = Producer(tls.url(password="wrong"), tls.url())
    with pytest.raises(RelayConnectionError) as info:
        producer.submit("x", max_tokens=1)
    assert "invalid username-password pair" in str(info.value)
    assert ":wrong@" not in str(info.value)  # the URL in the message has its password masked
