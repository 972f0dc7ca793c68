"""schemathesis over the gateway's own OpenAPI document, against a real gateway process, server
and worker: no 500, every response matches its documented schema.

Bounded for CI: few examples per operation; generated create requests are made short
(``max_tokens`` <= 4, ``n`` <= 2, no streaming) so that the tiny model answers at once.  The
dashboard's and batches' routes are tested by their own suites."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from tests.support.gateway_process import gateway_process, wait_for_worker
from workers.launcher import Stack

pytestmark = pytest.mark.integration

OWN = r"^/(v1/(completions|chat/completions|models|requests/.*)|healthz|readyz)$"


@pytest.fixture(scope="module")
def gateway(tiny_stack: Stack) -> Iterator[str]:
    with gateway_process(tiny_stack.url) as base:
        wait_for_worker(base)
        yield base


def shorten(body: Any) -> None:
    if not isinstance(body, dict):
        return
    body.pop("stream_options", None)
    body["stream"] = False
    if isinstance(body.get("n"), int):
        body["n"] = max(1, min(body["n"], 2))
    limit = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
    current = body.get(limit)
    body[limit] = max(1, min(current, 4)) if isinstance(current, int) and not isinstance(current, bool) else 4


def test_openapi_conformance(gateway: str) -> None:
    # schemathesis' own pytest plugin does not run under this pytest; its Python API does.
    schema = schemathesis.openapi.from_url(gateway + "/openapi.json").include(path_regex=OWN)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    seen: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            shorten(case.body)
            seen.append(case.operation.label)
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance], timeout=60)

        check()
    assert len(seen) >= 3 * len(operations), seen  # the examples really ran
