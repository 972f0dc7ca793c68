"""Redis Cluster URLs: ``redis+cluster://[user:password@]host:port[,host:port...][?options]``
(``rediss+cluster://`` with TLS).

Any node is a seed: the client asks the first seed that answers for the slot map and finds
the other nodes itself, so a couple of seeds are enough.  Pure standard library (settings
validates with it; redis-py is imported only by schemas/redis_util.py, which connects).
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from schemas.errors import ValidationError

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
DEFAULT_PORT = 6379


def is_cluster_url(url: str) -> bool:
    return url.startswith(CLUSTER_SCHEMES)


@dataclass(frozen=True)
class ClusterURL:
    seeds: tuple[tuple[str, int], ...]
    tls: bool
    userinfo: str  # "user:password@" as written (still percent-encoded), or ""
    query: str  # redis-py's URL options (ssl_ca_certs=..., ...), as written

    def node_url(self, index: int = 0) -> str:
        """A standalone URL of one seed with the same credentials and options: what redis-py's
        URL parser understands (it knows one host only)."""
        host, port = self.seeds[index]
        host = f"[{host}]" if ":" in host else host  # an IPv6 address
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.userinfo}{host}:{port}" + (f"?{self.query}" if self.query else "")


def parse_cluster_url(url: str, field: str = "redis_url") -> ClusterURL:
    """The seeds, TLS flag, credentials and options of a cluster URL; a ValidationError naming
    ``field`` for anything a cluster cannot take (no seed, a bad port, a database other than 0)."""
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    seeds = tuple(_seed(h.strip(), field) for h in hosts.split(",") if h.strip())
    if not seeds:
        raise ValidationError(field, f"a cluster URL needs at least one host:port seed, got {_masked(url)!r}")
    if parts.path not in ("", "/", "/0") or "db=" in parts.query:
        # Redis Cluster has database 0 only (SELECT is refused).
        raise ValidationError(field, f"a Redis Cluster has only database 0, got {_masked(url)!r}")
    return ClusterURL(seeds, url.startswith("rediss+"), f"{userinfo}@" if userinfo else "", parts.query)


def _seed(text: str, field: str) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise ValidationError(field, f"a cluster seed needs a host, got {text!r}")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValidationError(field, f"a cluster seed's port must be 1-65535, got {text!r}")
    return host, int(port_text)


def _masked(url: str) -> str:
    """The URL with the userinfo's password hidden (the message may end up in a log)."""
    head, sep, rest = url.partition("://")
    userinfo, at, hosts = rest.partition("@")
    if not at or "/" in userinfo:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{head}{sep}{user}{':***' if colon else ''}@{hosts}"
