"""Redis Sentinel broker URLs: the master's name taken out of the URL into kombu's
``master_name`` transport option; malformed lists refused naming the setting."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import redis
from kombu import Connection

from broker.app import broker_connection_args, make_celery
from broker.redis_transport import TRANSPORT as REDIS_TRANSPORT
from broker.sentinel_transport import TRANSPORT as SENTINEL_TRANSPORT
from broker.sentinel_transport import SentinelChannel
from schemas import settings
from schemas.errors import ValidationError
from schemas.sentinel_url import SentinelBroker, parse_sentinel_url

TWO = "sentinel://s1:26379;sentinel://:pw@s2:26380/1?master_name=mymaster"


def test_the_name_comes_out_of_any_url_of_the_list() -> None:
    assert parse_sentinel_url(TWO) == SentinelBroker("sentinel://s1:26379;sentinel://:pw@s2:26380/1", "mymaster")
    one = parse_sentinel_url("sentinel://s1?master_name=m&socket_timeout=3")
    assert one == SentinelBroker("sentinel://s1?socket_timeout=3", "m")


def test_the_same_name_twice_is_fine_two_names_are_not() -> None:
    same = "sentinel://a:1?master_name=m;sentinel://b:2?master_name=m"
    assert parse_sentinel_url(same).master_name == "m"
    with pytest.raises(ValidationError, match="different masters: m, n"):
        parse_sentinel_url("sentinel://a:1?master_name=m;sentinel://b:2?master_name=n")


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("sentinel://s1:26379", "needs the master's name"),
        ("sentinel://s1:26379?master_name=", "needs the master's name"),
        ("sentinel://s1:26379?master_name=m;redis://s2:6379", "URL 2 of the sentinel list does not start"),
        ("sentinel://:secret@s1:port?master_name=m", "URL 1 of the sentinel list has a bad port"),
        ("sentinel://:secret@/0?master_name=m", "URL 1 of the sentinel list has no host"),
    ],
)
def test_malformed_lists_name_the_setting_and_hide_passwords(url: str, why: str) -> None:
    with pytest.raises(ValidationError, match=why) as info:
        parse_sentinel_url(url, "TOKENRELAY_BROKER_URL")
    assert info.value.field == "TOKENRELAY_BROKER_URL" and "secret" not in str(info.value)


def test_the_setting_accepts_a_sentinel_broker_and_checks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", TWO)
    assert settings.broker_url() == TWO
    settings.validate_environment()
    monkeypatch.setenv("TOKENRELAY_BROKER_URL", "sentinel://s1:26379")
    with pytest.raises(ValidationError) as info:
        settings.validate_environment()
    assert info.value.field == "TOKENRELAY_BROKER_URL"
    with pytest.raises(ValidationError) as info:
        settings.broker_url("sentinel://s1:26379")
    assert info.value.field == "broker_url"


def test_celery_gets_the_urls_without_the_name_and_the_name_as_transport_option() -> None:
    app = make_celery(TWO)
    options = app.conf.broker_transport_options
    assert options["master_name"] == "mymaster" and options["visibility_timeout"] > 0
    conn = app.connection_for_write()
    assert conn.alt == ["sentinel://s1:26379", "sentinel://:pw@s2:26380/1"]
    assert conn.transport_options["master_name"] == "mymaster"
    assert conn.transport_cls == SENTINEL_TRANSPORT and conn.transport.Channel is SentinelChannel
    assert make_celery("redis://127.0.0.1:6379/0").conf.broker_transport == REDIS_TRANSPORT
    assert make_celery("amqp://guest:guest@127.0.0.1:5672//").conf.broker_transport is None


def test_a_channel_whose_connection_is_gone_raises_a_connection_error() -> None:
    """What Celery ignores while it drops a broken connection (kombu's own channel raised
    AttributeError there, and the worker stopped)."""
    channel = SentinelChannel.__new__(SentinelChannel)
    channel.connection = SimpleNamespace(client=None)
    with pytest.raises(redis.exceptions.ConnectionError):
        channel._connparams()


def test_kombu_refuses_the_name_in_the_url_which_is_why_it_is_taken_out() -> None:
    with pytest.raises(TypeError, match="master_name"):
        Connection("sentinel://s1:26379?master_name=mymaster")
    url, options = broker_connection_args("sentinel://s1:26379?master_name=mymaster")
    assert Connection(url, transport_options=options).transport_options == {"master_name": "mymaster"}


def test_other_broker_urls_pass_unchanged() -> None:
    for url in ("redis://127.0.0.1:6379/0", "amqp://guest:guest@rabbit:5672//"):
        assert broker_connection_args(url) == (url, {})
