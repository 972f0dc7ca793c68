"""The Celery configuration every producer and worker shares."""

from __future__ import annotations

import ssl

import pytest

from broker.app import make_celery


def test_json_only_acks_late_prefetch_one() -> None:
    conf = make_celery("redis://127.0.0.1:6379/0").conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.worker_prefetch_multiplier == 1


def test_expired_tasks_are_swept_soon_after_the_visibility_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_VISIBILITY_TIMEOUT_S", "8")
    options = make_celery("redis://127.0.0.1:6379/0").conf.broker_transport_options
    assert options["visibility_timeout"] == 8
    assert options["unacked_restore_interval"] * options["unacked_restore_throttle"] <= 2


def test_tls_broker_verifies_certificates() -> None:
    assert make_celery("rediss://:pw@redis.example:6380/0").conf.broker_use_ssl == {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    assert not make_celery("redis://127.0.0.1:6379/0").conf.broker_use_ssl


def test_a_bad_visibility_timeout_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from schemas.errors import ValidationError

    monkeypatch.setenv("TOKENRELAY_VISIBILITY_TIMEOUT_S", "1h")
    with pytest.raises(ValidationError) as info:
        make_celery("redis://127.0.0.1:6379/0")
    assert info.value.field == "TOKENRELAY_VISIBILITY_TIMEOUT_S"


def test_task_events_follow_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert not make_celery("redis://127.0.0.1:6379/0").conf.worker_send_task_events
    monkeypatch.setenv("TOKENRELAY_TASK_EVENTS", "1")
    conf = make_celery("redis://127.0.0.1:6379/0").conf
    assert conf.worker_send_task_events and conf.task_send_sent_event


def test_celery_dash_a_finds_an_app() -> None:
    """`celery -A broker.app` looks for a module attribute `app` (or `celery`)."""
    from celery import Celery

    import broker.app

    assert isinstance(broker.app.app, Celery) and broker.app.celery is broker.app.app


def test_rabbitmq_publishes_with_confirms() -> None:
    assert make_celery("amqp://guest:guest@127.0.0.1:5672//").conf.broker_transport_options["confirm_publish"] is True
    assert "confirm_publish" not in make_celery("redis://127.0.0.1:6379/0").conf.broker_transport_options
