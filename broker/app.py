"""One place that configures Celery for tokenrelay, for the producer and the workers alike.

- JSON only: a task message is data (`schemas.Job`), never a pickle that could run code.
- ``acks_late`` + prefetch 1: a task is acknowledged only after its stream has ended, and a
  worker reserves no more tasks than it runs, so a worker that dies leaves its requests on
  the queue for another worker (which resumes the stream where it stopped).
- The Redis transport redelivers an unacknowledged task after ``visibility_timeout``; it must
  exceed the longest generation, or a live request gets a second owner.  Redelivery is
  harmless for correctness (explicit stream ids fence the second writer) but wastes work.
- kombu looks for such expired messages only every ``unacked_restore_interval`` x
  ``unacked_restore_throttle`` seconds (100 s by default), so a dead worker's task could wait
  that long on top of the visibility timeout; the sweep here runs every few seconds (one
  cheap ZRANGE per worker), a quarter of the timeout at most.
"""

from __future__ import annotations

import os
import ssl

from celery import Celery

from schemas.job import DEFAULT_QUEUE
from schemas.settings import broker_url as resolve_broker_url

DEFAULT_VISIBILITY_TIMEOUT_S = 3600


def make_celery(broker_url: str | None = None, redis_url: str | None = None) -> Celery:
    url = resolve_broker_url(broker_url, redis_url)
    app = Celery("tokenrelay", broker=url, set_as_current=False)
    visibility = int(os.environ.get("TOKENRELAY_VISIBILITY_TIMEOUT_S", DEFAULT_VISIBILITY_TIMEOUT_S))
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
        },
        worker_hijack_root_logger=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    if url.startswith("rediss://") and "ssl_cert_reqs" not in url:
        # Celery refuses a rediss:// broker without an explicit certificate policy; verify
        # certificates unless the URL says otherwise (?ssl_cert_reqs=...).
        app.conf.broker_use_ssl = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    return app
