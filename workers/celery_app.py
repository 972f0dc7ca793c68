"""A complete tokenrelay worker for Celery's own command line:
``celery -A workers.celery_app worker [-Q QUEUES] [-c N] [--hostname NAME]``.

Everything comes from the settings (``TOKENRELAY_MODEL``, ``TOKENRELAY_REDIS_URL``,
``TOKENRELAY_LEASE_S``, ...; see schemas/settings.py).  The model loads when the worker starts
(Celery's ``worker_init``), not when this module is imported, so ``celery -A
workers.celery_app inspect ...`` stays cheap.  The pool is threads (every in-flight task
waits on the one engine of the process, see workers/main.py), with ``--max-running``'s default
as concurrency; without ``-Q`` the worker consumes the model's queue and ``tokenrelay``, as
``tokenrelay worker`` does.  ``tokenrelay worker`` stays the usual way to start one.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from celery import Celery
from kombu import Queue

from broker.app import make_celery
from schemas import settings
from schemas.job import DEFAULT_QUEUE, queue_for_model

log = logging.getLogger("tokenrelay.worker")


@functools.cache
def worker_app() -> Celery:
    from celery.signals import worker_init

    from workers.engine.scheduler import Limits

    app = make_celery()
    app.conf.update(
        worker_pool="threads",
        worker_concurrency=Limits().max_running,
        task_queues=[Queue(queue_for_model(settings.model_name())), Queue(DEFAULT_QUEUE)],
    )

    def start_engine(sender: Any = None, **_kwargs: object) -> None:
        if getattr(sender, "app", None) is app:
            attach_engine(app, sender.hostname, sorted(sender.app.amqp.queues.consume_from))

    worker_init.connect(start_engine, weak=False)
    return app


def attach_engine(app: Celery, worker_id: str, queues: list[str]) -> None:
    """What ``tokenrelay worker`` does before it consumes: engine thread (it loads the model),
    the generate task, heartbeats, and the warm-shutdown drain."""
    from celery.signals import worker_shutdown

    from workers.engine.scheduler import Limits
    from workers.main import WorkerOptions, build_runner, serve

    if not logging.getLogger().handlers:  # Celery leaves the root logger alone (hijack off)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    opts = WorkerOptions(
        worker_id=worker_id,
        lease_s=settings.lease_s(),
        grace_s=settings.grace_s(),
        max_attempts=settings.max_attempts(),
    )
    runner, name = build_runner(opts)
    port = settings.metrics_port()
    metrics = None if port is None else (port, "127.0.0.1")
    heartbeat = serve(
        app, runner, name, worker_id, queues, Limits().max_running, opts.grace_s, metrics, settings.engine()
    )

    def stop(**_kwargs: object) -> None:
        heartbeat.stop()
        runner.stop()

    worker_shutdown.connect(stop, weak=False)
    log.info("serving %s on queues %s as %s", name, ",".join(queues), worker_id)


def __getattr__(name: str) -> Celery:
    # PEP 562: the app Celery's `-A workers.celery_app` looks for, built on first access.
    if name in ("app", "celery"):
        return worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
