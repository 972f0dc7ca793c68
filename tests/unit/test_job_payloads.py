"""Task payloads and submit-time checks: only ValidationError, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.config import MAX_TOKENS, GenerationConfig
from schemas.errors import ValidationError
from schemas.job import JOB_VERSION, Job, request_id_of

GOOD: dict[str, Any] = Job("r-1", GenerationConfig(max_tokens=4), 1.5, prompt="hi").to_dict()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"submitted_at": "abc"}, "submitted_at"),
        ({"submitted_at": float("inf")}, "submitted_at"),
        ({"submitted_at": True}, "submitted_at"),
        ({"ttl_s": "abc"}, "ttl_s"),
        ({"ttl_s": 0}, "ttl_s"),
        ({"ttl_s": 10**12}, "ttl_s"),
        ({"config": [1, 2]}, "config"),
        ({"config": {"max_tokens": "5"}}, "max_tokens"),
        ({"config": {"bogus": 1}}, "bogus"),
        ({"extra": "x"}, "extra"),
        ({"surprise": 1}, "surprise"),
        ({"v": 99}, "v"),
        ({"v": "1"}, "v"),
        ({"request_id": "a{b}c"}, "request_id"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "\ud800"}, "prompt"),
        ({"prompt": None, "messages": [{"role": "user", "content": "ok"}, {"role": "user", "content": "x\udfff"}]},
         "messages[1].content"),
        ({"prompt": None, "messages": [{"role": "user", "content": "ok", "name": 3}]}, "messages[0].name"),
        ({"model": 7}, "model"),
    ],
)  # fmt: skip
def test_bad_payload_names_the_field(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Job.from_dict({**GOOD, **change})
    assert info.value.field == field


@pytest.mark.parametrize("payload", [None, 5, "job", [GOOD], b"x"])
def test_non_map_payload(payload: object) -> None:
    with pytest.raises(ValidationError) as info:
        Job.from_dict(payload)
    assert info.value.field == "payload"


def test_version_written_and_missing_version_is_one() -> None:
    assert GOOD["v"] == JOB_VERSION == 1
    old = {k: v for k, v in GOOD.items() if k != "v"}
    assert Job.from_dict(old) == Job.from_dict(GOOD)


def test_request_id_of_survives_anything() -> None:
    assert request_id_of({**GOOD, "ttl_s": "abc", "v": 99}) == "r-1"
    assert request_id_of({"request_id": "a{b}"}) is None
    assert request_id_of({"request_id": 5}) is None
    assert request_id_of(["r-1"]) is None
    assert request_id_of(None) is None


def test_max_tokens_bound_and_surrogate_stop() -> None:
    assert GenerationConfig(max_tokens=MAX_TOKENS).max_tokens == MAX_TOKENS
    with pytest.raises(ValidationError, match="max_tokens"):
        GenerationConfig(max_tokens=MAX_TOKENS + 1)
    with pytest.raises(ValidationError, match="stop"):
        GenerationConfig(stop=("ok", "\ud800"))
    with pytest.raises(ValidationError, match="temperature"):
        GenerationConfig.from_dict({"temperature": 10**400})


def test_digest_is_the_job_not_its_bookkeeping() -> None:
    a = Job("r-1", GenerationConfig(max_tokens=4), 1.5, prompt="hi")
    assert a.digest() == Job("r-1", GenerationConfig(max_tokens=4), 9.0, prompt="hi", ttl_s=7).digest()
    assert a.digest() != Job("r-1", GenerationConfig(max_tokens=5), 1.5, prompt="hi").digest()
    assert a.digest() != Job("r-1", GenerationConfig(max_tokens=4), 1.5, prompt="hi!").digest()
    assert a.digest() != Job("r-1", GenerationConfig(max_tokens=4), 1.5, prompt="hi", model="m").digest()
