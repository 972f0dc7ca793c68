"""Fuzzing (hypothesis) of everything that parses data from outside the process: the record
decoder (stream entries), GenerationConfig.from_dict and Job.from_dict (task payloads).
Whatever they are fed, they either succeed or raise their one documented error."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.config import FIELD_NAMES, GenerationConfig
from schemas.errors import SchemaError, ValidationError
from schemas.job import Job, request_id_of
from schemas.records import Record, Usage, decode, encode

SETTINGS = settings(max_examples=300, deadline=None)

# Text with lone surrogates and odd characters, as JSON and msgpack both allow.
texts = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | texts
json_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
msgpack_like = st.recursive(
    scalars | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(texts | st.integers() | st.binary(max_size=4), inner, max_size=4)
    ),
    max_leaves=12,
)
RECORD_FIELDS = ("v", "seq", "index", "text", "token_ids", "logprobs", "finish_reason", "usage", "error")


def _packs(value: Any) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):  # an integer beyond 64 bits, a surrogate
        return None


def _decode_only_schema_error(data: bytes) -> None:
    with contextlib.suppress(SchemaError):
        decode(data, "1-0")


@SETTINGS
@given(st.binary(max_size=200))
def test_decoder_on_arbitrary_bytes(data: bytes) -> None:
    _decode_only_schema_error(data)


@SETTINGS
@given(msgpack_like)
def test_decoder_on_arbitrary_msgpack_values(value: Any) -> None:
    data = _packs(value)
    if data is not None:
        _decode_only_schema_error(data)


@SETTINGS
@given(st.fixed_dictionaries({name: msgpack_like for name in RECORD_FIELDS}), st.sampled_from([1, 1, 1, 2]))
def test_decoder_on_record_shaped_maps(fields: dict[str, Any], version: int) -> None:
    # Every field present with random values: the paths past the version check get exercised.
    data = _packs({**fields, "v": version})
    if data is not None:
        _decode_only_schema_error(data)


@SETTINGS
@given(st.integers(0, 2**40), st.integers(0, 63), st.text(max_size=20), st.lists(st.integers(0, 2**31), max_size=5))
def test_valid_records_round_trip(seq: int, index: int, text: str, token_ids: list[int]) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        return  # msgpack refuses to pack a lone surrogate; a worker never writes one
    record = Record(seq=seq, index=index, text=text, token_ids=token_ids, usage=Usage())
    assert decode(encode(record), "1-0") == record


def _config_only_validation_error(data: Any) -> None:
    with contextlib.suppress(ValidationError):
        GenerationConfig.from_dict(data)


@SETTINGS
@given(json_like)
def test_generation_config_on_arbitrary_values(data: Any) -> None:
    _config_only_validation_error(data)


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(FIELD_NAMES)), json_like, max_size=6))
def test_generation_config_on_known_fields_with_arbitrary_values(data: dict[str, Any]) -> None:
    _config_only_validation_error(data)


JOB_FIELDS = ("v", "request_id", "config", "submitted_at", "prompt", "messages", "model", "ttl_s", "extra")
valid_job = Job("fuzz-1", GenerationConfig(), 1.0, prompt="hi").to_dict()


def _job_only_validation_error(payload: Any) -> None:
    with contextlib.suppress(ValidationError):
        Job.from_dict(payload)
    rid = request_id_of(payload)  # never raises: a worker calls it on anything
    assert rid is None or isinstance(rid, str)


@SETTINGS
@given(json_like)
def test_job_on_arbitrary_values(payload: Any) -> None:
    _job_only_validation_error(payload)


@SETTINGS
@given(st.dictionaries(st.sampled_from(JOB_FIELDS), json_like, max_size=9))
def test_job_on_known_fields_with_arbitrary_values(fields: dict[str, Any]) -> None:
    _job_only_validation_error({**valid_job, **fields})


@SETTINGS
@given(st.dictionaries(st.sampled_from(sorted(FIELD_NAMES)), json_like, max_size=4))
def test_job_with_arbitrary_config(config: dict[str, Any]) -> None:
    _job_only_validation_error({**valid_job, "config": config})


@SETTINGS
@given(st.lists(st.dictionaries(st.sampled_from(["role", "content", "name", "x"]), json_like, max_size=4), max_size=3))
def test_job_with_arbitrary_messages(messages: list[dict[str, Any]]) -> None:
    _job_only_validation_error({**valid_job, "prompt": None, "messages": messages})


logprob_like = st.fixed_dictionaries(
    {"token": msgpack_like, "bytes": msgpack_like, "logprob": msgpack_like},
    optional={
        "top_logprobs": st.lists(
            st.fixed_dictionaries({"token": texts, "bytes": msgpack_like, "logprob": msgpack_like}), max_size=2
        )
        | msgpack_like
    },
)
usage_like = st.dictionaries(st.sampled_from(sorted(Usage.__dataclass_fields__)), msgpack_like, max_size=9)
error_like = st.fixed_dictionaries({"type": msgpack_like, "message": msgpack_like})


@SETTINGS
@given(st.lists(logprob_like, max_size=3), usage_like | st.none(), error_like | st.none())
def test_decoder_on_nested_fields(logprobs: list[Any], usage: Any, error: Any) -> None:
    record = {**Record(seq=0).to_wire(), "logprobs": logprobs, "usage": usage, "error": error}
    data = _packs(record)
    if data is not None:
        _decode_only_schema_error(data)
