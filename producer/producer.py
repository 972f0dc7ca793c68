"""`Producer`: validate, register, enqueue; and cancel.

``submit`` checks everything before it touches the queue (bad input raises
``ValidationError`` naming the field and nothing is enqueued), writes the request's meta key
(so that readers can tell "queued" from "unknown", and a worker taking the request over finds
its job) and sends the Celery task by name to the model's queue.  If the broker refuses the
task, the meta key is removed again.  A caller-supplied ``request_id`` makes submit
idempotent: the same job again returns the id without enqueueing it twice; a different job
under a used id raises ``ValidationError("request_id", ...)`` (see producer/register.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from celery import Celery

from broker.app import make_celery
from producer import batch
from producer.register import Registered, add_commands, check_registered, meta_fields, register_into, run_cancel
from schemas import index, keys
from schemas.cancel import CancelOutcome
from schemas.config import GenerationConfig, check_known_fields
from schemas.errors import RelayConnectionError, ValidationError
from schemas.job import TASK_NAME, Job, queue_for_model
from schemas.redis_util import SyncClient, connect, describe_url, translate_redis_errors
from schemas.settings import redis_url as resolve_redis_url
from schemas.settings import ttl_s as resolve_ttl


class Producer:
    def __init__(
        self,
        redis_url: str | None = None,
        broker_url: str | None = None,
        *,
        ttl_s: int | None = None,
        client: SyncClient | None = None,
        celery_app: Celery | None = None,
    ) -> None:
        self.redis_url = resolve_redis_url(redis_url)
        self.ttl_s = resolve_ttl(ttl_s)
        # The broker first: a cluster Redis URL without a broker URL is a configuration error,
        # told before a cluster client connects (it reads the slot map at once).
        self._app = celery_app if celery_app is not None else make_celery(broker_url, self.redis_url)
        self._redis = client if client is not None else connect(self.redis_url)

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
        if not self._register(job, caller_id=request_id is not None):
            return rid  # the same job under this id was submitted before: idempotent
        try:
            # argsrepr: Celery would otherwise saferepr() the whole job for its logs (~1 ms).
            self._app.send_task(
                TASK_NAME, args=[job.to_dict()], queue=queue or queue_for_model(model), argsrepr=f"[job {rid}]"
            )
        except Exception as exc:  # kombu raises many types; all mean "not enqueued"
            self._forget(rid)
            raise RelayConnectionError(f"could not enqueue request {rid}: {exc}") from exc
        return rid

    def cancel(self, request_id: str) -> CancelOutcome:
        """Stop the request: a queued one ends at once (its ``cancelled`` records are written
        here), a running one at its worker's next step; one that already ended is left alone.
        Returns what happened; an unknown or expired id raises ``RequestNotFound``."""
        return run_cancel(self._redis, self.redis_url, request_id, self.ttl_s)

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

    def _register(self, job: Job, *, caller_id: bool) -> bool:
        """Write the request's meta (and the index); False when the same job was submitted
        under this id before.  A random id cannot be in use: one round trip for both."""
        with translate_redis_errors(self.redis_url):
            pipe = self._redis.pipeline(transaction=False)
            register_into(pipe, job)
            if not caller_id:
                add_commands(pipe, index.on_queued(job))
            outcome = check_registered(job, pipe.execute()[0])
            if caller_id and outcome is Registered.NEW:
                self._send_index(index.on_queued(job))
        return outcome is Registered.NEW

    def _register_into(self, pipe: Any, job: Job) -> None:
        """The meta key's commands, into a pipeline (producer/batch.py sends many at once;
        batch items have fresh random ids, so there is nothing to compare)."""
        meta = keys.meta_key(job.request_id)
        pipe.hset(meta, mapping=meta_fields(job))
        pipe.expire(meta, job.ttl_s)

    def _forget(self, request_id: str) -> None:
        """Not enqueued after all: remove the meta so that the id is free again."""
        with translate_redis_errors(self.redis_url):
            self._redis.delete(keys.meta_key(request_id))

    def _send_index(self, commands: list[index.Command]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        add_commands(pipe, commands)
        pipe.execute()
