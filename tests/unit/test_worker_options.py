"""workers.main's pure helpers: how --dtype reaches vLLM's EngineArgs."""

from __future__ import annotations

from workers.main import vllm_engine_args


def test_dtype_becomes_vllms_unless_auto_or_given_as_an_engine_arg() -> None:
    assert vllm_engine_args({"enforce_eager": True}, "auto") == {"enforce_eager": True}
    assert vllm_engine_args({}, "bfloat16") == {"dtype": "bfloat16"}
    assert vllm_engine_args({"dtype": "float16"}, "bfloat16") == {"dtype": "float16"}  # the explicit one wins
