"""Command-line parsing: every config flag lands in its `GenerationConfig` field, and a bad
value stops with exit 2 and the field's name before anything is submitted."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from cli import generate_cmd
from cli.generate_cmd import config_from_args, messages_from_args
from cli.main import build_parser, main
from cli.render import TextRenderer, record_json, usage_line
from schemas.config import FIELD_NAMES, GenerationConfig
from schemas.records import ErrorInfo, Record, Usage
from workers.engine.scheduler import Limits


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["generate", "hi", *argv])


# One flag (or flags) per field, with a value that differs from the default.
FLAG_CASES: list[tuple[list[str], str, object]] = [
    (["--max-tokens", "7"], "max_tokens", 7),
    (["--temperature", "0"], "temperature", 0.0),
    (["--top-p", "0.5"], "top_p", 0.5),
    (["--top-k", "40"], "top_k", 40),
    (["--seed", "123"], "seed", 123),
    (["--stop", "END", "--stop", "\n\n"], "stop", ("END", "\n\n")),
    (["--stop-token-id", "2", "--stop-token-id", "5"], "stop_token_ids", (2, 5)),
    (["--include-stop-str-in-output"], "include_stop_str_in_output", True),
    (["--ignore-eos"], "ignore_eos", True),
    (["-n", "3"], "n", 3),
    (["--n", "4"], "n", 4),
    (["--logprobs"], "logprobs", True),
    (["--logprobs", "--top-logprobs", "5"], "top_logprobs", 5),
    (["--no-skip-special-tokens"], "skip_special_tokens", False),
]


@pytest.mark.parametrize(("argv", "field", "value"), FLAG_CASES, ids=[c[0][0] for c in FLAG_CASES])
def test_each_flag_sets_its_field(argv: list[str], field: str, value: object) -> None:
    config = config_from_args(parse(*argv))
    assert getattr(config, field) == value
    # ...and nothing else moves away from the defaults.
    others = {f: getattr(config, f) for f in FIELD_NAMES if f not in (field, "logprobs")}
    defaults = GenerationConfig()
    assert others == {f: getattr(defaults, f) for f in others}


def test_every_config_field_has_a_flag() -> None:
    covered = {field for _argv, field, _value in FLAG_CASES}
    assert covered == FIELD_NAMES


def test_no_flags_gives_the_default_config() -> None:
    assert config_from_args(parse()) == GenerationConfig()


def test_top_logprobs_implies_logprobs() -> None:
    assert config_from_args(parse("--top-logprobs", "3")).logprobs is True


def test_submit_takes_the_same_flags() -> None:
    args = build_parser().parse_args(["submit", "hi", "--max-tokens", "9", "--stop", "x", "--chat"])
    assert config_from_args(args) == GenerationConfig(max_tokens=9, stop=("x",))
    assert messages_from_args(args) == [{"role": "user", "content": "hi"}]


def test_chat_messages() -> None:
    assert messages_from_args(parse()) is None
    assert messages_from_args(parse("--chat")) == [{"role": "user", "content": "hi"}]
    assert messages_from_args(parse("--system", "be brief")) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_common_options_follow_every_subcommand() -> None:
    parser = build_parser()
    for argv in (["generate", "p"], ["submit", "p"], ["tail", "id"], ["cancel", "id"], ["demo"], ["worker"]):
        args = parser.parse_args([*argv, "--redis-url", "redis://h:1/0", "--broker-url", "amqp://b//"])
        assert (args.redis_url, args.broker_url) == ("redis://h:1/0", "amqp://b//")


class NoProducer:
    """Stands in for `Producer`: any construction means the CLI went too far."""

    def __init__(self, *_args: object, **_kwargs: object) -> None:
        raise AssertionError("a bad config must be refused before connecting or submitting")


BAD_VALUES = [
    (["--max-tokens", "0"], "max_tokens"),
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "-1"], "top_k"),
    (["--seed", "-3"], "seed"),
    (["--stop-token-id", "-1"], "stop_token_ids"),
    (["-n", "0"], "n"),
    (["--top-logprobs", "99"], "top_logprobs"),
    (["--logprobs", "--top-logprobs", "-1"], "top_logprobs"),
]


@pytest.mark.parametrize("command", ["generate", "submit"])
@pytest.mark.parametrize(("argv", "field"), BAD_VALUES, ids=[f"{a[0]}={a[-1]}" for a, _ in BAD_VALUES])
def test_bad_value_exits_2_naming_the_field(
    command: str, argv: list[str], field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(generate_cmd, "Producer", NoProducer)
    assert main([command, "hi", *argv]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"error: {field}: ")


def test_unparsable_value_is_an_argparse_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["generate", "hi", "--max-tokens", "many"])
    assert exc.value.code == 2
    assert "--max-tokens" in capsys.readouterr().err


def test_bad_redis_url_exits_2_before_submitting(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "hi", "--redis-url", "http://nope"]) == 2
    assert capsys.readouterr().err.startswith("error: redis_url: ")


# -- rendering (pure: no server) -------------------------------------------------------------

USAGE = Usage(prompt_tokens=3, completion_tokens=4, total_tokens=7, ttft_s=0.25, decode_tokens_per_s=12.5, e2e_s=1.0)


def test_json_line_has_every_field_and_the_cursor() -> None:
    record = Record(seq=2, text="hé", token_ids=[1, 2], finish_reason="error", usage=USAGE,
                    error=ErrorInfo("OOM", "boom"), entry_id="3-0")
    data = json.loads(record_json(record))
    assert data["entry_id"] == "3-0"
    assert data["text"] == "hé"
    assert data["usage"]["completion_tokens"] == 4
    assert data["error"] == {"type": "OOM", "message": "boom"}
    assert set(data) == {*record.to_wire(), "entry_id"}


def test_usage_line() -> None:
    line = usage_line(USAGE, ["stop"])
    assert "4 tokens" in line and "ttft 0.25s" in line and "12.5 tok/s" in line and "finish stop" in line


def test_text_renderer_labels_choices(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    r = TextRenderer(out, n=2)
    r.add(Record(seq=0, index=0, text="a"))
    r.add(Record(seq=1, index=1, text="x"))
    r.add(Record(seq=2, index=1, text="y", finish_reason="stop"))
    r.add(Record(seq=3, index=0, text="b", finish_reason="length"))
    r.add(Record(seq=4, index=0, usage=USAGE))
    assert out.getvalue() == "[0] ab\n[1] xy\n"
    assert "finish length,stop" in capsys.readouterr().err


def test_json_line_is_one_line_whatever_the_text() -> None:
    text = "a\nb\x85c\u2028d\u2029e\x1cf"
    line = record_json(Record(seq=0, text=text))
    assert len(line.splitlines()) == 1
    assert json.loads(line)["text"] == text


def test_prefill_chunk_is_a_number_or_auto(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["worker"]).prefill_chunk == 32
    assert parser.parse_args(["worker", "--prefill-chunk", "auto"]).prefill_chunk is None  # sized by step cost
    assert parser.parse_args(["worker", "--prefill-chunk", "24"]).prefill_chunk == 24
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["worker", "--prefill-chunk", "big"])
    assert exc.value.code == 2
    assert "expected a number of tokens or 'auto', got 'big'" in capsys.readouterr().err


def test_step_slowdown_is_a_number_above_one_used_only_with_auto_chunks() -> None:
    parser = build_parser()
    assert parser.parse_args(["worker"]).step_slowdown is None  # Limits' default, 1.7
    assert parser.parse_args(["worker", "--prefill-chunk", "auto", "--step-slowdown", "1.4"]).step_slowdown == 1.4
    assert Limits(prefill_chunk=None, step_slowdown=1.4).step_slowdown == 1.4
    for bad in (1.0, 0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"step_slowdown must be a finite number > 1, got"):
            Limits(prefill_chunk=None, step_slowdown=bad)


def test_dtype_is_one_of_the_names(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    assert parser.parse_args(["worker"]).dtype is None  # TOKENRELAY_DTYPE, else auto
    assert parser.parse_args(["worker", "--dtype", "bfloat16"]).dtype == "bfloat16"
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["worker", "--dtype", "bf16"])
    assert exc.value.code == 2
    assert "invalid choice: 'bf16'" in capsys.readouterr().err
