"""The Celery task: a thin adapter between a broker message and the engine runner.

It parses the job (JSON), lets the runner claim the request and decide what to do (run,
resume, refuse, or nothing: already ended or held by another live worker; see
workers/lifecycle.py) and waits until the request needs this worker no more.  Returning
acknowledges the message (``acks_late``).  Every payload that names a usable request id
ends that request's stream, with an ``error`` record if the payload is bad; the task never
raises, so a bad message can neither kill the worker nor leave a reader waiting.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from schemas.errors import ValidationError
from schemas.job import TASK_NAME, Job, request_id_of
from workers.runner import EngineRunner

log = logging.getLogger(__name__)


def register_generate_task(app: Celery, runner: EngineRunner) -> Any:
    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
    def generate(*args: Any, **kwargs: Any) -> str:
        return handle_task(args, kwargs, runner)

    return generate


def handle_task(args: tuple[Any, ...], kwargs: dict[str, Any], runner: EngineRunner) -> str:
    """Any argument shape a message can carry; exactly one positional payload is valid."""
    payload = args[0] if args else kwargs.get("payload")
    if len(args) + len(kwargs) != 1:
        problem = ValidationError("payload", f"the task takes one payload, got {len(args)} args and {sorted(kwargs)}")
        return _refuse(payload, runner, problem)
    return handle_job(payload, runner)


def handle_job(payload: Any, runner: EngineRunner) -> str:
    try:
        job = Job.from_dict(payload)
    except ValidationError as exc:
        return _refuse(payload, runner, exc)
    except Exception as exc:  # Job.from_dict promises ValidationError; never let a message kill us
        log.exception("unexpected error parsing a task payload")
        return _refuse(payload, runner, ValidationError("payload", f"{type(exc).__name__}: {exc}"))
    return runner.wait(runner.begin(job.request_id, job))


def _refuse(payload: Any, runner: EngineRunner, exc: ValidationError) -> str:
    rid = request_id_of(payload)
    if rid is None:
        log.error("dropping a task message without a usable request_id: %s", exc)
        return "failed"
    log.warning("request %s: bad task payload (%s); ending it with an error record", rid, exc)
    return runner.wait(runner.begin(rid, None, invalid=exc))
