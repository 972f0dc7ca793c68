"""The Celery task: a thin adapter between a broker message and the engine runner.

It parses the job (JSON), reads what the stream already holds (a redelivered task resumes
where the last worker stopped; a finished one is simply acknowledged; one cancelled while
queued never reaches the model), hands the job to the engine thread and waits until the
request's last record is in Redis.  Returning acknowledges the message (``acks_late``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

from schemas.config import GenerationConfig
from schemas.errors import SchemaError, ValidationError
from schemas.job import TASK_NAME, Job
from schemas.records import ErrorInfo
from workers.resume import is_complete, resume_state
from workers.runner import EngineRunner

log = logging.getLogger(__name__)


def register_generate_task(app: Celery, runner: EngineRunner, serves: Callable[[str | None], bool]) -> Any:
    @app.task(name=TASK_NAME, acks_late=True, ignore_result=True)
    def generate(payload: dict[str, Any]) -> str:
        return handle_job(payload, runner, serves)

    return generate


def handle_job(payload: dict[str, Any], runner: EngineRunner, serves: Callable[[str | None], bool]) -> str:
    try:
        job = Job.from_dict(payload)
    except ValidationError as exc:
        return _reject_bad_payload(payload, runner, exc)
    try:
        records, cancelled = runner.sink.read_records(job.request_id)
    except SchemaError as exc:
        log.error("request %s: its stream holds an undecodable record (%s); not touching it", job.request_id, exc)
        return "failed"
    if is_complete(records):
        return "finished"  # a redelivered message whose stream had already ended
    if not serves(job.model):
        error = ErrorInfo("unknown_model", f"model {job.model!r} is not served by this worker")
        return runner.reject(job.request_id, job.config, "error", error).wait()
    if cancelled and not records:
        return runner.reject(job.request_id, job.config, "cancelled").wait()
    return runner.submit(job, resume_state(records)).wait()


def _reject_bad_payload(payload: dict[str, Any], runner: EngineRunner, exc: ValidationError) -> str:
    rid = payload.get("request_id") if isinstance(payload, dict) else None
    if not isinstance(rid, str):
        log.error("dropping a task message without a usable request_id: %s", exc)
        return "failed"
    try:
        config = GenerationConfig.from_dict(payload.get("config") or {})
    except ValidationError:
        config = GenerationConfig()
    return runner.reject(rid, config, "error", ErrorInfo("invalid_request", str(exc))).wait()
