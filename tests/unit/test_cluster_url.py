"""Redis Cluster URLs: parsing, validation by the settings, and the clients built from them
(the asyncio cluster client connects lazily, so its configuration is checked without a server)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio
from redis.asyncio.connection import SSLConnection

from cli.main import main
from schemas import settings
from schemas.cluster_url import ClusterURL, is_cluster_url, parse_cluster_url
from schemas.errors import ValidationError
from schemas.redis_util import connect_async, describe_url, is_cluster


def test_several_seeds_with_credentials_and_defaults() -> None:
    url = "redis+cluster://app:s3cr%40t@node-a:7000, node-b ,[::1]:7002/0"
    parsed = parse_cluster_url(url)
    assert parsed == ClusterURL((("node-a", 7000), ("node-b", 6379), ("::1", 7002)), False, "app:s3cr%40t@", "")
    assert parsed.node_url() == "redis://app:s3cr%40t@node-a:7000"
    assert parsed.node_url(2) == "redis://app:s3cr%40t@[::1]:7002"
    assert is_cluster_url(url) and not is_cluster_url("redis://node-a:7000/0")


def test_tls_keeps_its_options() -> None:
    parsed = parse_cluster_url("rediss+cluster://:pw@h1:7000,h2:7001?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem")
    assert parsed.tls and parsed.seeds == (("h1", 7000), ("h2", 7001))
    assert parsed.node_url() == "rediss://:pw@h1:7000?ssl_cert_reqs=none&ssl_ca_certs=/ca.pem"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+cluster://", "at least one host:port"),
        ("redis+cluster://u:hidden@", "at least one host:port"),
        ("redis+cluster://h1:70000", "port must be 1-65535"),
        ("redis+cluster://h1:port", "port must be 1-65535"),
        ("redis+cluster://:7000", "needs a host"),
        ("redis+cluster://h1:7000/1", "only database 0"),
        ("redis+cluster://h1:7000?db=2", "only database 0"),
    ],
)
def test_bad_cluster_urls_name_the_setting(url: str, complaint: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValidationError, match=complaint) as info:
        settings.redis_url(url)
    assert info.value.field == "redis_url" and "hidden" not in str(info.value)
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", url)
    with pytest.raises(ValidationError, match=complaint) as info:
        settings.validate_environment()
    assert info.value.field == "TOKENRELAY_REDIS_URL"


def test_settings_take_a_cluster_for_streams_but_never_as_broker(monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = "redis+cluster://h1:7000,h2:7001"
    assert settings.redis_url(cluster) == cluster
    assert settings.broker_url("amqp://guest@rabbit//", cluster) == "amqp://guest@rabbit//"
    with pytest.raises(ValidationError, match="cannot be a Redis Cluster") as info:
        settings.broker_url(cluster, cluster)
    assert info.value.field == "broker_url"
    with pytest.raises(ValidationError, match="a broker URL") as info:
        settings.broker_url(None, cluster)
    assert info.value.field == "TOKENRELAY_BROKER_URL"
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", cluster)
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", "rediss+cluster://h1:7000")
    with pytest.raises(ValidationError, match="cannot be a Redis Cluster") as info:
        settings.validate_environment()
    assert info.value.field == "TOKENRELAY_BROKER_URL"
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", "redis://queue:6379/0")
    settings.validate_environment()


def test_a_command_that_enqueues_needs_a_broker_for_a_cluster(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TOKENRELAY_REDIS_URL", "redis+cluster://127.0.0.1:1")
    monkeypatch.delenv("TOKENRELAY_BROKER_URL", raising=False)
    settings.validate_environment()  # reading needs no broker: tail and cancel may run
    assert main(["submit", "hello"]) == 2  # refused before anything connects
    err = capsys.readouterr().err
    assert "TOKENRELAY_BROKER_URL" in err and "Traceback" not in err


def test_describe_url_masks_a_cluster_password() -> None:
    assert describe_url("redis+cluster://app:pw@h1:7000,h2:7001") == "redis+cluster://app:***@h1:7000,h2:7001"


def test_async_cluster_client_has_every_seed_credentials_and_tls() -> None:
    client = connect_async("rediss+cluster://app:pw@127.0.0.1:7000,127.0.0.1:7001?ssl_cert_reqs=none")
    try:
        assert isinstance(client, redis.asyncio.RedisCluster) and is_cluster(client)
        assert set(client.nodes_manager.startup_nodes) == {"127.0.0.1:7000", "127.0.0.1:7001"}
        kwargs = client.connection_kwargs
        assert kwargs["username"] == "app" and kwargs["password"] == "pw"
        assert kwargs["connection_class"] is SSLConnection and kwargs["ssl_cert_reqs"] == "none"
        assert kwargs["max_connections"] == settings.redis_max_connections()
    finally:
        asyncio.run(client.aclose())


def test_standalone_urls_still_make_plain_clients() -> None:
    for url in ("redis://127.0.0.1:6379/0", "rediss://127.0.0.1:6380/0", "unix:///tmp/r.sock"):
        client = connect_async(url)
        assert isinstance(client, redis.asyncio.Redis) and not is_cluster(client)
