"""`Producer`: validate, register, enqueue; and cancel.

``submit`` checks everything before it touches the queue (bad input raises
``ValidationError`` naming the field and nothing is enqueued), writes the request's meta key
(so that readers can tell "queued" from "unknown") and sends the Celery task by name to the
model's queue.  If the broker refuses the task, the meta key is removed again.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import redis
from celery import Celery

from broker.app import make_celery
from producer import batch
from schemas import index, keys
from schemas.config import GenerationConfig, check_known_fields
from schemas.errors import RelayConnectionError, ValidationError
from schemas.job import TASK_NAME, Job, queue_for_model
from schemas.redis_util import connect, describe_url, translate_redis_errors
from schemas.settings import redis_url as resolve_redis_url
from schemas.settings import ttl_s as resolve_ttl


class Producer:
    def __init__(
        self,
        redis_url: str | None = None,
        broker_url: str | None = None,
        *,
        ttl_s: int | None = None,
        client: redis.Redis | None = None,
        celery_app: Celery | None = None,
    ) -> None:
        self.redis_url = resolve_redis_url(redis_url)
        self.ttl_s = resolve_ttl(ttl_s)
        self._redis = client if client is not None else connect(self.redis_url)
        self._app = celery_app if celery_app is not None else make_celery(broker_url, self.redis_url)

    def submit(
        self,
        prompt: str | None = None,
        *,
        messages: list[dict[str, str]] | None = None,
        model: str | None = None,
        request_id: str | None = None,
        queue: str | None = None,
        config: GenerationConfig | None = None,
        **config_fields: Any,
    ) -> str:
        """Validate and enqueue one request; returns its id (a str).

        Config fields go as keyword arguments (``max_tokens=64, temperature=0``) or as a
        ready ``config``; not both."""
        if config is not None and config_fields:
            raise ValidationError(next(iter(config_fields)), "pass config fields or config=, not both")
        check_known_fields(config_fields)
        cfg = config if config is not None else GenerationConfig(**config_fields)
        rid = keys.new_request_id() if request_id is None else keys.check_request_id(request_id)
        job = Job(
            request_id=rid,
            config=cfg,
            submitted_at=time.time(),
            prompt=prompt,
            messages=messages,
            model=model,
            ttl_s=self.ttl_s,
        )
        self._register(job)
        try:
            # argsrepr: Celery would otherwise saferepr() the whole job for its logs (~1 ms).
            self._app.send_task(
                TASK_NAME, args=[job.to_dict()], queue=queue or queue_for_model(model), argsrepr=f"[job {rid}]"
            )
        except Exception as exc:  # kombu raises many types; all mean "not enqueued"
            self._redis.delete(keys.meta_key(rid))
            raise RelayConnectionError(f"could not enqueue request {rid}: {exc}") from exc
        return rid

    def cancel(self, request_id: str) -> None:
        """Ask the worker to stop the request (queued or running); idempotent."""
        with translate_redis_errors(self.redis_url):
            key, value, ttl = keys.cancel_set_args(request_id, self.ttl_s)
            self._redis.set(key, value, ex=ttl)

    def submit_batch(self, items: Iterable[object], **config: Any) -> str:
        """Enqueue many requests as one batch (see producer/batch.py); returns the batch id."""
        return batch.submit_batch(self, items, **config)

    def resume_batch(self, batch_id: str, items: Iterable[object], **config: Any) -> list[int]:
        return batch.resume_batch(self, batch_id, items, **config)

    def cancel_batch(self, batch_id: str) -> int:
        return batch.cancel_batch(self, batch_id)

    def close(self) -> None:
        self._redis.close()
        self._app.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Producer(redis_url={describe_url(self.redis_url)!r})"

    def _register(self, job: Job) -> None:
        with translate_redis_errors(self.redis_url):
            pipe = self._redis.pipeline(transaction=False)
            self._register_into(pipe, job)
            for command in index.on_queued(job):  # the request index (schemas/index.py)
                pipe.execute_command(*command)
            pipe.execute()

    def _register_into(self, pipe: Any, job: Job) -> None:
        """The meta key's commands, into a pipeline (producer/batch.py sends many at once)."""
        meta = keys.meta_key(job.request_id)
        pipe.hset(meta, mapping={"submitted_at": repr(job.submitted_at), "model": job.model or ""})
        pipe.expire(meta, self.ttl_s)
