"""Raw token bytes: exact for the tiny byte-level model, SmolLM2 and a SentencePiece-style vocab."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from workers.engine.token_bytes import build_token_bytes, sentencepiece_bytes, token_text

TEXTS = ["👩‍👩‍👧 🎉", "日本語のテキスト、中文", "crème brûlée, naïve, Ångström", " two  spaces\n\ttab <|im_end|>"]
REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module", params=["tiny", "smollm2"])
def tokenizer(request: pytest.FixtureRequest) -> Any:
    from transformers import AutoTokenizer

    fixture = "tiny_model_dir" if request.param == "tiny" else "smollm2_dir"
    folder: Path = request.getfixturevalue(fixture)
    return AutoTokenizer.from_pretrained(folder)


def test_one_entry_per_token_id(tokenizer: Any) -> None:
    assert len(build_token_bytes(tokenizer)) == len(tokenizer)


@pytest.mark.parametrize("text", TEXTS)
def test_joined_bytes_equal_text(tokenizer: Any, text: str) -> None:
    table = build_token_bytes(tokenizer)
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert b"".join(table[i] for i in ids) == text.encode()
    assert all(REPLACEMENT not in token_text(table[i]) for i in ids)


def test_special_tokens_are_literal(tokenizer: Any) -> None:
    table = build_token_bytes(tokenizer)
    for token, token_id in zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True):
        assert table[token_id] == token.encode()


def test_token_text_has_no_replacement_character(tokenizer: Any) -> None:
    # The only exception: a token that really is U+FFFD (SmolLM2 has one).
    for raw in build_token_bytes(tokenizer):
        assert REPLACEMENT not in token_text(raw) or raw == REPLACEMENT.encode()


def test_token_text_shows_partial_characters_escaped() -> None:
    assert token_text("日".encode()[:2]) == "\\xe6\\x97"
    assert token_text(b"ab") == "ab"


def test_sentencepiece_style_vocabulary() -> None:
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<0xE6>": 1, "<0x97>": 2, "<0xA5>": 3, "\u2581hi": 4, "x": 5}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")
    table = build_token_bytes(tokenizer)
    assert table[1:6] == [b"\xe6", b"\x97", b"\xa5", b" hi", b"x"]
    assert sentencepiece_bytes("<0x0A>") == b"\n"
