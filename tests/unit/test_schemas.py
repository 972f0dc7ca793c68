"""Config validation and the record codec."""

from __future__ import annotations

import contextlib
import math

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import (
    ErrorInfo,
    GenerationConfig,
    Job,
    Record,
    SchemaError,
    TokenLogprob,
    TokenRelayError,
    TopLogprob,
    Usage,
    ValidationError,
    decode,
    encode,
    keys,
)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_tokens", 0),
        ("max_tokens", 1.5),
        ("max_tokens", True),
        ("temperature", -0.1),
        ("temperature", math.nan),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("seed", -3),
        ("seed", "7"),
        ("stop", [""]),
        ("stop", [3]),
        ("stop_token_ids", [-1]),
        ("n", 0),
        ("n", 1000),
        ("logprobs", 1),
        ("top_logprobs", 21),
        ("ignore_eos", "yes"),
        ("include_stop_str_in_output", None),
    ],
)
def test_bad_values_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as info:
        GenerationConfig.from_dict({field: value})
    assert info.value.field == field
    assert field in str(info.value)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TokenRelayError)


def test_unknown_field_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        GenerationConfig.from_dict({"max_token": 5})
    assert info.value.field == "max_token"


def test_top_logprobs_needs_logprobs() -> None:
    with pytest.raises(ValidationError, match="top_logprobs"):
        GenerationConfig(top_logprobs=3)


def test_config_round_trip_and_normalisation() -> None:
    cfg = GenerationConfig(max_tokens=5, temperature=0, stop="END", stop_token_ids=[7], n=2, seed=3)
    assert cfg.stop == ("END",) and cfg.stop_token_ids == (7,) and cfg.greedy
    assert GenerationConfig.from_dict(cfg.to_dict()) == cfg


def test_job_checks_prompt_messages_and_id() -> None:
    cfg = GenerationConfig()
    with pytest.raises(ValidationError, match="prompt"):
        Job("abc", cfg, 0.0)
    with pytest.raises(ValidationError, match="role"):
        Job("abc", cfg, 0.0, messages=[{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValidationError, match="request_id"):
        Job("bad id {with} braces", cfg, 0.0, prompt="x")
    job = Job("abc", cfg, 1.5, messages=[{"role": "user", "content": "hi"}], model="m")
    assert Job.from_dict(job.to_dict()) == job


def test_keys_share_a_hash_tag_and_ids_are_unguessable() -> None:
    rid = keys.new_request_id()
    assert len(rid) == 32 and int(rid, 16) >= 0  # 128 random bits
    assert keys.deltas_key(rid) == f"tokenrelay:{{{rid}}}:deltas"
    assert keys.cancel_key(rid) == f"tokenrelay:{{{rid}}}:cancel"
    assert keys.seq_of_entry_id(keys.entry_id_for(41)) == 41
    assert len({keys.new_request_id() for _ in range(1000)}) == 1000


FULL = Record(
    seq=3,
    index=1,
    text="héllo 日本",
    token_ids=[1, 2, 3],
    logprobs=[TokenLogprob("h", [104], -0.5, [TopLogprob("h", [104], -0.5), TopLogprob("\\xe6", [230], -2.0)])],
    finish_reason="stop",
    usage=Usage(1, 2, 3, 0.1, 0.2, 10.0, 20.0, 0.05, 1.0),
    error=ErrorInfo("model_error", "boom"),
)


def test_record_round_trip() -> None:
    assert decode(encode(FULL)) == FULL
    plain = Record(seq=0)
    assert decode(encode(plain), "1-0") == plain
    assert decode(encode(plain), "1-0").entry_id == "1-0"


def test_every_field_is_on_the_wire() -> None:
    wire = msgpack.unpackb(encode(Record(seq=0)))
    assert set(wire) == {"v", "seq", "index", "text", "token_ids", "logprobs", "finish_reason", "usage", "error"}


@pytest.mark.parametrize(
    "data",
    [
        b"\xc1",
        b"",
        msgpack.packb([1, 2]),
        msgpack.packb({"v": 2, "seq": 0}),
        msgpack.packb({"v": 1}),
        msgpack.packb({**msgpack.unpackb(encode(Record(seq=0))), "seq": -1}),
        msgpack.packb({**msgpack.unpackb(encode(Record(seq=0))), "text": b"bytes"}),
        msgpack.packb({**msgpack.unpackb(encode(Record(seq=0))), "finish_reason": "bored"}),
    ],
)
def test_garbage_and_unknown_versions_are_refused(data: bytes) -> None:
    with pytest.raises(SchemaError):
        decode(data)


@given(st.binary(max_size=64))
def test_decode_never_raises_anything_but_schema_error(data: bytes) -> None:
    with contextlib.suppress(SchemaError):
        decode(data)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host:6380/1", "rediss://user:***@host:6380/1"),
        ("redis://host:6379/0?password=s3cret&db=2", "redis://host:6379/0?password=***&db=2"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
    ],
)
def test_passwords_never_appear_in_messages(url: str, shown: str) -> None:
    from schemas.redis_util import describe_url

    assert describe_url(url) == shown
