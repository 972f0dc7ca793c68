"""IncrementalDetokenizer: whole characters only, stop strings across tokens, token accounting."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.token_bytes import build_token_bytes

REPLACEMENT = "\ufffd"
TEXTS = [
    "日本語のテキスト、中文",
    "👩‍👩‍👧 🎉 party",
    "crème brûlée, naïve, Ångström",
    "Привет, κόσμε! مرحبا नमस्ते 안녕하세요",
    "plain ascii with  double spaces\nand lines",
]


def stream(
    tokenizer: Any, ids: Sequence[int], prompt_ids: Sequence[int] = (), **options: Any
) -> tuple[list[tuple[str, int]], IncrementalDetokenizer]:
    """Push ids one by one, releasing after each push as the engine does; stop when stopped."""
    detok = IncrementalDetokenizer(tokenizer, prompt_ids, **options)
    releases = []
    for token_id in ids:
        detok.push(token_id)
        releases.append(detok.release())
        if detok.stopped:
            break
    releases.append(detok.release(final=True))
    return releases, detok


def joined(releases: list[tuple[str, int]]) -> str:
    return "".join(text for text, _count in releases)


def pushed(releases: list[tuple[str, int]]) -> int:
    return len(releases) - 1


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="module", params=["tiny", "smol"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


@pytest.mark.parametrize("text", TEXTS)
def test_round_trip_whole_characters(tokenizer: Any, text: str) -> None:
    ids = encode(tokenizer, text)
    releases, detok = stream(tokenizer, ids, encode(tokenizer, "Some prompt: "))
    assert joined(releases) == text
    assert all(REPLACEMENT not in part for part, _count in releases)
    assert sum(count for _text, count in releases) == len(ids)
    assert not detok.stopped


def test_characters_really_are_split(tokenizer: Any) -> None:
    ids = encode(tokenizer, "日本語のテキスト 👩‍👩‍👧")
    assert any(REPLACEMENT in tokenizer.decode([i]) for i in ids)


def test_tokens_wait_for_the_rest_of_their_character(tiny: Any) -> None:
    ids = encode(tiny, "日")
    assert len(ids) > 1, "the tiny vocabulary should split this character"
    releases, _ = stream(tiny, ids)
    assert releases[:-2] == [("", 0)] * (len(ids) - 1)
    assert releases[-2] == ("日", len(ids))


def test_incomplete_character_at_the_end_is_dropped(tiny: Any) -> None:
    ids = encode(tiny, "ab日")
    releases, _ = stream(tiny, ids[:-1])
    assert joined(releases) == "ab"
    assert sum(count for _text, count in releases) == len(ids) - 1


def test_special_tokens_skipped_or_kept(tiny: Any) -> None:
    ids = [*encode(tiny, "hi"), tiny.eos_token_id]
    assert joined(stream(tiny, ids)[0]) == "hi"
    assert joined(stream(tiny, ids, skip_special_tokens=False)[0]) == "hi<|im_end|>"


def char_boundaries(tokenizer: Any, ids: Sequence[int]) -> set[int]:
    """Character offsets at which a token ends (with whole characters so far)."""
    ends = set()
    for k in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:k], clean_up_tokenization_spaces=False)
        if not text.endswith(REPLACEMENT):
            ends.add(len(text))
    return ends


def inner_span(tokenizer: Any, text: str, width: int) -> tuple[int, int]:
    """A span of ``width`` characters whose start and end both fall inside tokens."""
    bounds = char_boundaries(tokenizer, encode(tokenizer, text))
    for start in range(1, len(text) - width):
        if start not in bounds and start + width not in bounds:
            return start, start + width
    raise AssertionError("no span that starts and ends mid-token")


@pytest.mark.parametrize("include", [False, True])
def test_stop_starting_and_ending_mid_token(tokenizer: Any, include: bool) -> None:
    text = "the wonderful memory inside everything, 日本語のテキスト"
    start, end = inner_span(tokenizer, text, 4)
    ids = encode(tokenizer, text)
    releases, detok = stream(tokenizer, ids, stop=[text[start:end]], include_stop_str_in_output=include)
    assert detok.stopped
    assert joined(releases) == text[: end if include else start]
    assert sum(count for _text, count in releases) == pushed(releases)


def test_earliest_ending_match_wins(tiny: Any) -> None:
    ids = encode(tiny, "xxabcxx")
    releases, detok = stream(tiny, ids, stop=["abc", "b"])
    assert detok.stopped
    assert joined(releases) == "xxa"


def test_earliest_ending_match_wins_inside_one_token(tiny: Any) -> None:
    ids = encode(tiny, "creation")
    assert "ation" in tiny.convert_ids_to_tokens(ids), "one token must hold both matches"
    releases, detok = stream(tiny, ids, stop=["ation", "t"])
    assert detok.stopped
    assert joined(releases) == "crea"


def test_same_end_earliest_start_wins(tiny: Any) -> None:
    ids = encode(tiny, "xxabcxx")
    assert joined(stream(tiny, ids, stop=["bc", "abc"])[0]) == "xx"
    assert joined(stream(tiny, ids, stop=["bc", "abc"], include_stop_str_in_output=True)[0]) == "xxabc"


def test_stop_in_prompt_has_no_effect(tiny: Any) -> None:
    prompt = encode(tiny, "Say STOP and then ST")
    releases, detok = stream(tiny, encode(tiny, "OP is not a match"), prompt, stop=["STOP"])
    assert not detok.stopped
    assert joined(releases) == "OP is not a match"


def test_partial_stop_prefix_is_held_then_released_at_end(tiny: Any) -> None:
    releases, detok = stream(tiny, encode(tiny, "the end is nea"), stop=["near"])
    assert not detok.stopped
    assert joined(releases[:-1]) == "the end is "
    assert releases[-1][0] == "nea"
    assert sum(count for _text, count in releases) == pushed(releases)


def test_match_never_leaks(tokenizer: Any) -> None:
    text = "one two three, 日本語のテキスト and more"
    stop = "テキス"
    releases, detok = stream(tokenizer, encode(tokenizer, text), stop=["zzz", stop])
    assert detok.stopped
    out = ""
    for part, _count in releases:
        out += part
        assert text.index(stop) >= len(out)
        assert "テ" not in out
    assert out == text[: text.index(stop)]


def test_pushes_after_stop_and_after_final_are_ignored(tiny: Any) -> None:
    detok = IncrementalDetokenizer(tiny, [], stop=["b"])
    for token_id in encode(tiny, "abc"):
        detok.push(token_id)
    assert detok.stopped
    assert detok.release(final=True)[0] == "a"
    assert detok.release(final=True) == ("", 0)


def test_counts_sum_to_pushed_tokens_when_stopped(tiny: Any) -> None:
    releases, _ = stream(tiny, encode(tiny, "日本語のテキスト"), stop=["語の"])
    assert joined(releases) == "日本"
    assert sum(count for _text, count in releases) == pushed(releases)


def test_prompt_ending_inside_a_character_is_not_used_as_context(tiny: Any) -> None:
    ids = encode(tiny, "日a")
    cut = len(encode(tiny, "日")) - 1
    releases, _ = stream(tiny, ids[cut:], ids[:cut])
    assert joined(releases) == tiny.decode(ids[cut:])


def test_tiny_model_output_streams_like_one_shot_decode(tiny: Any, tiny_model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Hi"}]
    prompt = list(tiny.apply_chat_template(messages, add_generation_prompt=True, return_dict=False))
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=120, min_new_tokens=120, do_sample=False)
    generated = out[0, len(prompt) :].tolist()
    assert sum(REPLACEMENT in tiny.decode([i]) for i in generated) > 10, "random model should split characters"
    releases, _ = stream(tiny, generated, prompt)
    special = set(tiny.all_special_ids)
    raw = b"".join(build_token_bytes(tiny)[i] for i in generated if i not in special)
    # Every complete character, invalid bytes as U+FFFD, an incomplete last one held back.
    reference = codecs.getincrementaldecoder("utf-8")("replace").decode(raw, final=False)
    assert joined(releases) == reference
    assert sum(count for _text, count in releases) == len(generated)


def byte_token(tokenizer: Any, raw: bytes) -> int:
    """The id of the single-byte token for ``raw`` (byte-level vocabularies hold all 256)."""
    return build_token_bytes(tokenizer).index(raw)


def test_truly_invalid_last_byte_stays_as_in_one_shot_decode(tiny: Any) -> None:
    lone = byte_token(tiny, b"\x97")  # a continuation byte with no lead byte
    ids = [*encode(tiny, "ab"), lone]
    assert joined(stream(tiny, ids)[0]) == "ab" + REPLACEMENT == tiny.decode(ids)


def test_invalid_byte_then_cut_character_keeps_only_the_invalid_one(tiny: Any) -> None:
    ids = [*encode(tiny, "ab"), byte_token(tiny, b"\x97"), byte_token(tiny, b"\xe6")]
    assert tiny.decode(ids) == "ab" + REPLACEMENT * 2
    assert joined(stream(tiny, ids)[0]) == "ab" + REPLACEMENT


def test_stop_is_seen_at_the_token_that_completes_it_even_mid_character(tiny: Any) -> None:
    """A token whose bytes are whole characters plus the start of another: a stop string in
    the whole part must stop decoding at that token, not one token later."""
    table = build_token_bytes(tiny)
    for token_id, raw in enumerate(table):  # noqa: B007 - the match is used after the loop
        try:
            head = codecs.getincrementaldecoder("utf-8")("strict").decode(raw, final=False)
        except UnicodeDecodeError:
            continue
        if head and len(head.encode()) < len(raw):
            break
    else:
        pytest.fail("the tiny vocabulary has no token of whole characters plus a partial one")
    detok = IncrementalDetokenizer(tiny, [], stop=[head[-1]])
    detok.push(token_id)
    assert detok.stopped
    text, count = detok.release(final=True)
    assert text == head[:-1] and count == 1
