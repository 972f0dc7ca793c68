"""A private RabbitMQ server on free ports, for tests that kill or restart the broker (the
machine's shared one at 5672 is never touched).

Debian's ``rabbitmq-server`` drops root to the ``rabbitmq`` user, so the node's directory is
handed to that user.  Messages on Celery's durable queues are persistent: they survive a
kill -9 and restart of the node, which is what the broker-restart scenario relies on."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def available() -> bool:
    return shutil.which("rabbitmq-server") is not None


class RabbitServer:
    def __init__(self) -> None:
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"tokenrelay{self.port}@localhost"
        self.dir = Path(tempfile.mkdtemp(prefix="tokenrelay-rabbit-"))
        (self.dir / "enabled_plugins").write_text("[].\n")  # no management listener to collide
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = {self.port}\nloopback_users = none\n")
        if os.geteuid() == 0:
            shutil.chown(self.dir, "rabbitmq", "rabbitmq")
            for p in self.dir.iterdir():
                shutil.chown(p, "rabbitmq", "rabbitmq")
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.proc: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        d = str(self.dir)
        return {
            **os.environ,
            "HOME": d,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{d}/pid",
        }

    def start(self, timeout_s: float = 60.0) -> RabbitServer:
        with open(self.dir / "server.log", "ab") as log:  # the child keeps its own copy open
            cmd = ["rabbitmq-server"]
            self.proc = subprocess.Popen(cmd, env=self._env(), stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not self._accepts():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (self.dir / "server.log").read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"private RabbitMQ on port {self.port} did not start:\n{tail}")
            time.sleep(0.2)
        return self

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _processes(self) -> list[psutil.Process]:
        """Every process of this node: the start script runs the VM through ``su``, which
        opens a new session, so neither the child's pid nor its process group reaches the VM;
        the node name in each process's environment does."""
        found = []
        for p in psutil.process_iter():
            try:
                if p.environ().get("RABBITMQ_NODENAME") == self.node:
                    found.append(p)
            except (psutil.Error, OSError):
                continue
        return found

    def kill(self) -> None:
        """kill -9 the whole node (the Erlang VM and its helpers), as a crash would."""
        for p in self._processes():
            with contextlib.suppress(psutil.Error):
                p.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(10)
            self.proc = None
        deadline = time.monotonic() + 10
        while self._accepts():
            if time.monotonic() > deadline:
                raise RuntimeError(f"private RabbitMQ on port {self.port} still accepts after kill -9")
            time.sleep(0.1)

    def restart(self, down_s: float = 0.0) -> None:
        self.kill()
        time.sleep(down_s)
        self.start()

    def remove(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
