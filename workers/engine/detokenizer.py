"""Incremental detokenization with stop strings, one :class:`IncrementalDetokenizer` per choice.

Theory of operation
-------------------
*Decoding* follows vLLM's prefix/read offsets.  ``ids[prefix_offset:read_offset]`` is a small
window of tokens whose text is already out; after each pushed token the window and the window
plus the new tokens are decoded, and the difference is new text, but only when the longer text
does not end in U+FFFD: a trailing U+FFFD means a character is still cut in half, so its tokens
wait for the rest of it.  The offsets are seeded with the last few prompt tokens because
SentencePiece decoders drop a leading space of the first token they see.  Each step decodes a
few tokens, never the whole sequence, and only whole UTF-8 characters come out.  For byte-level
BPE everything produced equals ``tokenizer.decode(generated_ids, skip_special_tokens=...,
clean_up_tokenization_spaces=False)``, except an incomplete character at the very end of a
finished choice, which is dropped.  A truly invalid byte (a random model can emit a lone
continuation byte) becomes U+FFFD exactly as in the one-shot decode, even at the very end: there
the raw token bytes tell it apart from a character cut short.

*Stop strings.*  Decoded, unreleased text is searched for the stop strings; only the new text
and the last ``len(stop) - 1`` characters before it can hold a new match, so nothing is searched
twice.  A token that ends inside a character still has its whole characters searched (without
committing them), so decoding stops at the token that completes the match.  The match that wins
is the one that ends first, as streaming character by character would meet it; among those, the
one that starts first.  Text is then cut before the match (or after it,
with ``include_stop_str_in_output``) and :attr:`stopped` turns true; later pushes are ignored.
Until then :meth:`release` holds back the longest suffix of the unreleased text that is a prefix
of some stop string, since the next token could complete it.  Released text is never searched
again, which is sound: a match can never straddle a release point, because the part before the
point would have been a held-back prefix.  The prompt is never searched.

*Token accounting.*  A token is released by the :meth:`release` call that sends out the last
character of its text; tokens that have produced no text yet (part of a character, a skipped
special token) wait for the next text.  ``release(final=True)`` ends the choice: it sends out all
safe text (a held-back stop prefix too, if no stop matched) and counts every token not yet
counted, so the counts of all calls add up to the number of pushed tokens.
"""

from __future__ import annotations

import codecs
from collections import deque
from collections.abc import Sequence
from typing import Any

from workers.engine.token_bytes import token_bytes_converter

REPLACEMENT = "\ufffd"
# Prompt tokens kept as decoding context (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET).
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns one choice's token ids into safe-to-stream text and applies its stop strings."""

    def __init__(
        self,
        tokenizer: Any,
        prompt_ids: Sequence[int],
        stop: Sequence[str] = (),
        include_stop_str_in_output: bool = False,
        skip_special_tokens: bool = True,
    ) -> None:
        self._tokenizer = tokenizer
        self._skip_special = skip_special_tokens
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:])
        self._prefix_offset = 0
        self._read_offset = len(self._ids)
        if self._ids and self._decode(self._ids).endswith(REPLACEMENT):
            # A prompt given as raw ids may end inside a character; the window's text would then
            # not be a prefix of what follows, so start without context.
            self._prefix_offset = self._read_offset
        self._stops = tuple(s for s in stop if s)  # an empty stop string would match everywhere
        self._include_stop = include_stop_str_in_output
        self._stop_prefixes = _proper_prefixes(self._stops)
        self._max_prefix = max((len(s) - 1 for s in self._stops), default=0)
        self._pending = ""  # decoded, not yet released text
        self._released = 0  # characters released so far
        self._token_ends: deque[tuple[int, int]] = deque()  # (text end, token count), in order
        self._waiting = 0  # pushed tokens that produced no text yet
        self._stopped = False
        self._finished = False

    @property
    def stopped(self) -> bool:
        """A stop string matched: the choice ends with finish_reason ``stop``."""
        return self._stopped

    def push(self, token_id: int) -> None:
        """Add one generated token; ignored once stopped or finished."""
        if self._stopped or self._finished:
            return
        self._ids.append(token_id)
        self._waiting += 1
        prefix_text, new_text = self._decode_window()
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            self._add_text(new_text[len(prefix_text) :])
        elif self._stops:
            # The token ends inside a character, but the whole characters before it may
            # already complete a stop string: stop now, not one token later.
            self._peek_stop(new_text[len(prefix_text) :].rstrip(REPLACEMENT))

    def release(self, final: bool = False) -> tuple[str, int]:
        """Text now safe to stream, and how many of the oldest uncounted tokens it releases.

        ``final`` ends the choice (for any reason): everything safe goes out and every remaining
        token is counted."""
        if self._finished:
            return "", 0
        if final:
            self._flush_tail()
            keep = 0
        else:
            keep = 0 if self._stopped else self._held_back()
        cut = len(self._pending) - keep
        text, self._pending = self._pending[:cut], self._pending[cut:]
        self._released += cut
        count = self._count_released()
        if final:
            count += self._count_rest()
            self._pending = ""
            self._finished = True
        return text, count

    def _decode(self, ids: list[int]) -> str:
        return str(
            self._tokenizer.decode(ids, skip_special_tokens=self._skip_special, clean_up_tokenization_spaces=False)
        )

    def _decode_window(self) -> tuple[str, str]:
        window = self._ids[self._prefix_offset :]
        prefix_text = self._decode(window[: self._read_offset - self._prefix_offset])
        return prefix_text, self._decode(window)

    def _flush_tail(self) -> None:
        """At the end, the text of tokens still waiting, minus an incomplete last character."""
        if self._stopped or self._read_offset == len(self._ids):
            return
        prefix_text, new_text = self._decode_window()
        tail = new_text[len(prefix_text) :]
        if tail.endswith(REPLACEMENT):
            tail = tail.rstrip(REPLACEMENT) + REPLACEMENT * self._invalid_tail_chars()
        self._read_offset = len(self._ids)
        if tail:
            self._add_text(tail)

    def _invalid_tail_chars(self) -> int:
        """How many U+FFFD at the end of the waiting tokens' text stand for truly invalid bytes
        (kept, as a one-shot decode has them) rather than for a character cut short (dropped).
        The decoded text cannot tell the two apart, the raw bytes can; this runs at most once
        per choice, so the bytes of the few waiting tokens are looked up only here."""
        to_bytes = token_bytes_converter(self._tokenizer)
        skipped = set(self._tokenizer.all_special_ids) if self._skip_special else set()
        raw = b"".join(to_bytes(i) for i in self._ids[self._read_offset :] if i not in skipped)
        # Without ``final`` the decoder keeps an incomplete last sequence to itself.
        text = codecs.getincrementaldecoder("utf-8")("replace").decode(raw, final=False)
        return len(text) - len(text.rstrip(REPLACEMENT))

    def _add_text(self, text: str) -> None:
        """Append newly decoded text, give it the waiting tokens, and look for a stop match."""
        old_len = len(self._pending)
        self._pending += text
        self._token_ends.append((self._released + len(self._pending), self._waiting))
        self._waiting = 0
        if self._stops:
            self._find_stop(old_len)

    def _find_stop(self, old_len: int) -> None:
        match = self._match(self._pending, old_len)
        if match is not None:
            self._cut_at(match)

    def _peek_stop(self, visible: str) -> None:
        """Look for a match in text that is not committed yet (its last token is part of a
        character); on a match, commit the text up to the cut and stop."""
        if not visible:
            return
        match = self._match(self._pending + visible, len(self._pending))
        if match is not None:
            self._pending += visible
            self._token_ends.append((self._released + len(self._pending), self._waiting))
            self._waiting = 0
            self._cut_at(match)

    def _match(self, text: str, old_len: int) -> tuple[int, int] | None:
        """(end, start) of the winning match that ends after ``old_len``, if any."""
        best: tuple[int, int] | None = None
        for stop in self._stops:
            start = text.find(stop, max(0, old_len - len(stop) + 1))
            if start >= 0 and (best is None or (start + len(stop), start) < best):
                best = (start + len(stop), start)
        return best

    def _cut_at(self, match: tuple[int, int]) -> None:
        end, start = match
        self._pending = self._pending[: end if self._include_stop else start]
        self._stopped = True

    def _held_back(self) -> int:
        """Length of the longest suffix of the unreleased text that could begin a stop string."""
        for size in range(min(self._max_prefix, len(self._pending)), 0, -1):
            if self._pending[-size:] in self._stop_prefixes:
                return size
        return 0

    def _count_released(self) -> int:
        count = 0
        while self._token_ends and self._token_ends[0][0] <= self._released:
            count += self._token_ends.popleft()[1]
        return count

    def _count_rest(self) -> int:
        count = self._waiting + sum(n for _end, n in self._token_ends)
        self._token_ends.clear()
        self._waiting = 0
        return count


def _proper_prefixes(stops: Sequence[str]) -> frozenset[str]:
    """Every non-empty proper prefix of every stop string (a full one is a match, not a prefix)."""
    return frozenset(s[:size] for s in stops for size in range(1, len(s)))
