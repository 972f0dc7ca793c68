"""Property tests: the streamed text equals a one-shot decode cut at the earliest-ending stop match.

Token ids are drawn straight from the tiny multilingual vocabulary, so sequences are full of
partial characters, lone continuation bytes and special tokens; stop strings are mostly drawn
from the text itself so that matches happen."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workers.engine.detokenizer import IncrementalDetokenizer
from workers.engine.token_bytes import build_token_bytes

REPLACEMENT = "\ufffd"
ALPHABET = "ab xyz.日本語テキ中文ρκαдлé👍🎉\n"
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def tok(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def table(tok: Any) -> list[bytes]:
    return build_token_bytes(tok)


def one_shot(tokenizer: Any, table: list[bytes], ids: Sequence[int], skip_special: bool) -> str:
    """Reference text: decode everything at once; drop the U+FFFD of an incomplete character at
    the end (the raw bytes tell it apart from a truly invalid last byte, which stays)."""
    text = str(tokenizer.decode(list(ids), skip_special_tokens=skip_special, clean_up_tokenization_spaces=False))
    skipped = set(tokenizer.all_special_ids) if skip_special else set()
    raw = b"".join(table[i] for i in ids if i not in skipped)
    whole = codecs.decode(raw, "utf-8", "replace")
    held = codecs.getincrementaldecoder("utf-8")("replace").decode(raw, final=False)
    assert text == whole, "the one-shot decode is plain lossy UTF-8 of the token bytes"
    return held


def earliest_match(text: str, stops: Sequence[str]) -> tuple[int, int] | None:
    """(start, end) of the match that ends first; the longest one among those."""
    found = [(i + len(s), i) for s in stops if s and (i := text.find(s)) >= 0]
    if not found:
        return None
    end, start = min(found)
    return start, end


def token_ids(tokenizer: Any) -> st.SearchStrategy[list[int]]:
    raw = st.lists(st.integers(0, len(tokenizer) - 1), max_size=40)
    encoded = st.text(ALPHABET, max_size=30).map(lambda t: list(tokenizer.encode(t, add_special_tokens=False)))
    return st.one_of(raw, encoded)


def stop_strings(data: st.DataObject, text: str) -> list[str]:
    """Substrings of the text (so matches happen), pieces of earlier stops (so matches overlap),
    sometimes random strings."""
    stops: list[str] = []
    for _ in range(data.draw(st.integers(0, 3))):
        source = data.draw(st.sampled_from(["text", "stop", "random"]))
        if source == "stop" and stops:
            stops.append(substring(data, data.draw(st.sampled_from(stops))))
        elif source != "random" and text:
            stops.append(substring(data, text))
        else:
            stops.append(data.draw(st.text(ALPHABET, min_size=1, max_size=4)))
    return stops


def substring(data: st.DataObject, text: str) -> str:
    start = data.draw(st.integers(0, len(text) - 1))
    return text[start : start + data.draw(st.integers(1, 5))]


def run(detok: IncrementalDetokenizer, ids: Sequence[int], every: int) -> tuple[list[str], int, int]:
    """Push, releasing every ``every`` pushes; return the releases, token count and pushes."""
    texts, counted, pushes = [], 0, 0
    for token_id in ids:
        detok.push(token_id)
        pushes += 1
        if pushes % every == 0:
            text, count = detok.release()
            texts.append(text)
            counted += count
        if detok.stopped:
            break
    text, count = detok.release(final=True)
    return [*texts, text], counted + count, pushes


@SETTINGS
@given(data=st.data())
def test_stream_matches_one_shot_reference(tok: Any, table: list[bytes], data: st.DataObject) -> None:
    ids = data.draw(token_ids(tok))
    prompt = data.draw(st.lists(st.integers(0, len(tok) - 1), max_size=8))
    skip_special = data.draw(st.booleans())
    include = data.draw(st.booleans())
    full = one_shot(tok, table, ids, skip_special)
    stops = stop_strings(data, full)
    every = data.draw(st.integers(1, 3))
    detok = IncrementalDetokenizer(tok, prompt, stops, include, skip_special)
    releases, counted, pushes = run(detok, ids, every)

    match = earliest_match(full, stops)
    cut = len(full) if match is None else match[1] if include else match[0]
    out = "".join(releases)
    assert out == full[:cut]
    assert detok.stopped == (match is not None)
    assert counted == pushes
    assert out.count(REPLACEMENT) == full[:cut].count(REPLACEMENT)  # only genuine mid-text ones
    if match is not None and not include:
        assert len(out) <= match[0]  # not one character of the match went out
