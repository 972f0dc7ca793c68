"""One place that configures Celery for tokenrelay, for the producer and the workers alike.

- JSON only: a task message is data (`schemas.Job`), never a pickle that could run code.
- On RabbitMQ, publisher confirms: submit returns only once the broker has the message.
- ``acks_late`` + prefetch 1: a task is acknowledged only after its stream has ended, and a
  worker reserves no more tasks than it runs, so a worker that dies leaves its requests on
  the queue for another worker (which resumes the stream where it stopped).
- The Redis transport redelivers an unacknowledged task after ``visibility_timeout``.  With
  leases (workers/lease.py) a redelivered copy of a request that a live worker holds is
  settled at once ("already owned") and one that has ended is acknowledged at once, so the
  timeout need not exceed the longest generation: it only bounds how long the task of a
  worker that died between receiving it and claiming its lease waits (default 5 min).
- Redis Sentinel as the broker: ``sentinel://host:26379[;sentinel://host2:26379...]`` with
  ``?master_name=<name>``; the name becomes kombu's ``master_name`` transport option
  (schemas/sentinel_url.py), and kombu asks the sentinels for the current master.
- kombu looks for such expired messages only every ``unacked_restore_interval`` x
  ``unacked_restore_throttle`` seconds (100 s by default), so a dead worker's task could wait
  that long on top of the visibility timeout; the sweep here runs every few seconds (one
  cheap ZRANGE per worker), a quarter of the timeout at most.

``celery -A broker.app inspect ping`` (and flower, ``celery events``, ``celery purge``...)
find the module-level ``app`` (alias ``celery``), built from the settings on first use, so
importing this module neither reads the environment nor connects.  That app has no engine: a
worker started from it would take generation tasks it cannot run and drop them, so it refuses
to start; ``celery -A workers.celery_app worker`` (or ``tokenrelay worker``) runs a worker.
"""

from __future__ import annotations

import functools
import ssl
from typing import Any

from celery import Celery

from broker.redis_transport import TRANSPORT as REDIS_TRANSPORT
from broker.sentinel_transport import TRANSPORT as SENTINEL_TRANSPORT
from schemas import settings
from schemas.job import DEFAULT_QUEUE
from schemas.sentinel_url import is_sentinel_url, parse_sentinel_url
from schemas.settings import DEFAULT_VISIBILITY_TIMEOUT_S as DEFAULT_VISIBILITY_TIMEOUT_S  # older spelling
from schemas.settings import broker_url as resolve_broker_url

ENGINELESS_WORKER = (
    "broker.app is tokenrelay's app for monitoring (celery inspect, flower); it has no engine. "
    "Start a worker with `celery -A workers.celery_app worker` or `tokenrelay worker`."
)


def make_celery(broker_url: str | None = None, redis_url: str | None = None) -> Celery:
    url = resolve_broker_url(broker_url, redis_url)
    url, transport_options = broker_connection_args(url)
    app = Celery("tokenrelay", broker=url, set_as_current=False)
    visibility = settings.visibility_timeout_s()
    events = settings.task_events()
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue=DEFAULT_QUEUE,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        broker_transport_options={
            "visibility_timeout": visibility,
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            "max_retries": 3,
            **transport_options,
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # Task events are what flower and `celery events` show; `celery control enable_events`
        # (flower sends it itself) turns them on at run time as well.
        worker_send_task_events=events,
        task_send_sent_event=events,
    )
    if url.split("://", 1)[0] in ("amqp", "amqps", "pyamqp"):
        # Publisher confirms: submit returns only once RabbitMQ has taken the message (for a
        # durable queue, persisted it).  Without them a message the broker loses in a crash
        # between receiving and persisting it is gone with no error for the caller.
        app.conf.broker_transport_options["confirm_publish"] = True
    app.conf.broker_transport = _transport_for(url)
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        # Celery refuses a rediss:// broker without an explicit certificate policy; verify
        # certificates unless the URL says otherwise (?ssl_cert_reqs=...).
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app


def broker_connection_args(url: str) -> tuple[str, dict[str, Any]]:
    """The URL kombu takes and the transport options the URL implies: for Redis Sentinel
    (``sentinel://...?master_name=...``), the URLs without the master's name plus the option
    ``master_name`` (kombu refuses the name in a URL).  Other URLs come back as they are."""
    if not is_sentinel_url(url):
        return url, {}
    sentinel = parse_sentinel_url(url)
    return sentinel.url, {"master_name": sentinel.master_name}


def _transport_for(url: str) -> str | None:
    """Our subclasses of kombu's Redis transports (an explicit transport wins over the URL's
    scheme): one command client per channel (broker/redis_transport.py) and, for Sentinel, a
    fix that keeps a worker alive through a failover (broker/sentinel_transport.py).  Other
    schemes (``rediss://``, ``redis+socket://``, RabbitMQ) keep kombu's own."""
    if is_sentinel_url(url):
        return SENTINEL_TRANSPORT
    if url.startswith("redis://"):
        return REDIS_TRANSPORT
    return None


@functools.cache
def monitoring_app() -> Celery:
    """The app ``celery -A broker.app`` finds: the settings' broker, no tasks, no worker."""
    from celery.signals import worker_init

    app = make_celery()

    def refuse_worker(sender: Any = None, **_kwargs: object) -> None:
        if getattr(sender, "app", None) is app:
            # Celery logs and swallows an Exception from a signal handler; SystemExit stops it.
            raise SystemExit(ENGINELESS_WORKER)

    worker_init.connect(refuse_worker, weak=False)
    return app


def __getattr__(name: str) -> Celery:
    # PEP 562: built on first access, so that importing broker.app (the producer does) reads
    # no environment variable and fails on none.
    if name in ("app", "celery"):
        return monitoring_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
