"""Every error status of a real gateway process, in OpenAI's error object: 400 naming the
field, 401 (TOKENRELAY_API_KEYS), 404, 503 with Retry-After (Redis or the broker on a dead
port); the official client raises its matching exceptions."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.support.gateway_process import free_port, gateway_process, wait_for_worker
from workers.launcher import Stack

pytestmark = pytest.mark.integration

CHAT = {"messages": [{"role": "user", "content": "Hi"}]}  # every case is refused before submit


@pytest.fixture(scope="module")
def gateway(tiny_stack: Stack) -> Iterator[tuple[str, str]]:
    with gateway_process(tiny_stack.url) as base:
        yield base, wait_for_worker(base)


@pytest.fixture
def http(gateway: tuple[str, str]) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway[0], timeout=60) as client:
        yield client


def error_of(reply: httpx.Response, status: int) -> dict[str, object]:
    assert reply.status_code == status, reply.text
    assert reply.headers["x-request-id"]
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return dict(error)


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"presence_penalty": 0.5}, "presence_penalty"),
        ("/v1/chat/completions", {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ("/v1/chat/completions", {"response_format": {"type": "json_object"}}, "response_format"),
        ("/v1/chat/completions", {"frobnicate": 1}, "frobnicate"),
        ("/v1/chat/completions", {"temperature": -1}, "temperature"),
        ("/v1/chat/completions", {"max_completion_tokens": 0}, "max_completion_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ("/v1/chat/completions", {"top_logprobs": 2}, "top_logprobs"),
        ("/v1/completions", {"prompt": "x", "echo": True}, "echo"),
        ("/v1/completions", {"prompt": ["a", "b"]}, "prompt"),
        ("/v1/completions", {"prompt": "x", "logprobs": 99}, "logprobs"),
    ],
)
def test_400_names_the_field(http: httpx.Client, path: str, extra: dict[str, object], param: str) -> None:
    body = {**CHAT, **extra} if path.endswith("chat/completions") else {"max_tokens": 2, **extra}
    error = error_of(http.post(path, json=body), 400)
    assert error["param"] == param and param in str(error["message"])
    assert error["type"] == "invalid_request_error"


def test_400_bad_cursor_and_json(http: httpx.Client, tiny_stack: Stack) -> None:
    rid = tiny_stack.producer.submit("Hi", max_tokens=2)
    assert error_of(http.get(f"/v1/requests/{rid}/events", params={"after": "junk"}), 400)["param"] == "after"
    error_of(http.post("/v1/completions", content=b"{not json", headers={"content-type": "application/json"}), 400)


def test_404(http: httpx.Client) -> None:
    assert error_of(http.get("/v1/requests/0123456789abcdef"), 404)["code"] == "not_found"
    error_of(http.get("/v1/requests/0123456789abcdef/events"), 404)
    error_of(http.post("/v1/requests/0123456789abcdef/cancel"), 404)
    unknown_model = http.post("/v1/completions", json={"model": "no-such-model", "prompt": "x"})
    assert error_of(unknown_model, 404)["param"] == "model"
    error_of(http.get("/v1/nothing-here"), 404)


def test_openai_client_exceptions(gateway: tuple[str, str]) -> None:
    with openai.OpenAI(base_url=gateway[0] + "/v1", api_key="x", max_retries=0) as client:
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model=gateway[1], presence_penalty=1.0, **CHAT)  # type: ignore[arg-type]
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="no-such-model", prompt="x")
        with (
            pytest.raises(openai.APIError, match="prompt has"),
            client.completions.create(
                model=gateway[1], prompt="hello world " * 4000, max_tokens=2, stream=True
            ) as stream,
        ):
            list(stream)


def test_401_api_keys(tiny_stack: Stack) -> None:
    with gateway_process(tiny_stack.url, env={"TOKENRELAY_API_KEYS": "k1, k2"}) as base:
        with httpx.Client(base_url=base, timeout=30) as http:
            assert error_of(http.get("/v1/models"), 401)["code"] == "invalid_api_key"
            error_of(http.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401)
            assert http.get("/v1/models", headers={"Authorization": "Bearer k2"}).status_code == 200
            assert http.get("/v1/models", params={"api_key": "k1"}).status_code == 200  # EventSource's way
            assert http.get("/healthz").status_code == 200  # probes need no key
        with (
            openai.OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0) as client,
            pytest.raises(openai.AuthenticationError),
        ):
            client.models.list()
        with openai.OpenAI(base_url=base + "/v1", api_key="k1", max_retries=0) as client:
            assert client.models.list().data


def test_503_redis_down() -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_process(dead) as base, httpx.Client(base_url=base, timeout=30) as http:
        reply = http.post("/v1/completions", json={"prompt": "x"})
        assert error_of(reply, 503)["type"] == "server_error" and reply.headers["retry-after"]
        error_of(http.get("/v1/requests/0123456789abcdef"), 503)
        error_of(http.get("/v1/models"), 503)
        ready = http.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["broker"] == "unreachable"
        assert http.get("/healthz").status_code == 200


def test_503_broker_down(tiny_stack: Stack) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    with gateway_process(tiny_stack.url, broker_url=dead) as base, httpx.Client(base_url=base, timeout=60) as http:
        reply = http.post("/v1/completions", json={"prompt": "x"})
        assert error_of(reply, 503)["type"] == "server_error" and reply.headers["retry-after"]
        ready = http.get("/readyz").json()["checks"]
        assert ready["broker"] == "unreachable" and ready["redis"] == "ok"
