"""The raw bytes behind every token id, computed once when a model loads.

Logprob records carry each token's ``bytes`` and a ``token`` string.  A token of a byte-level
tokenizer is often part of a UTF-8 character, so decoding it alone would give U+FFFD; the raw
bytes are exact, and :func:`token_text` shows a partial character as ``\\xe6\\x97`` instead.

Three tokenizer families are told apart by their ``tokenizers`` decoder:

- byte-level BPE (GPT-2, Llama 3, SmolLM2): each character of the token string stands for one
  byte through GPT-2's ``bytes_to_unicode`` table, inverted here;
- SentencePiece style (Llama 2, Mistral): ``▁`` is a space and ``<0xNN>`` byte-fallback tokens
  are that byte;
- anything else: the tokenizer's own ``convert_tokens_to_string`` of the lone token.

Added and special tokens are literal text (``<|im_end|>``), whatever the family.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Any

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_SPIECE_SPACE = "\u2581"


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: printable bytes stand for themselves, the other
    188 are shifted to code points 256 and up so that every byte has a visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {chr(b): b for b in printable}
    shifted = 0
    for b in range(256):
        if b not in printable:
            table[chr(256 + shifted)] = b
            shifted += 1
    return table


def byte_level_bytes(token: str) -> bytes:
    """Bytes of a byte-level BPE token string; a character outside the table (a hand-added
    token) stands for its own UTF-8."""
    table = byte_decoder()
    return b"".join(bytes([table[c]]) if c in table else c.encode() for c in token)


def sentencepiece_bytes(token: str) -> bytes:
    """Bytes of a SentencePiece token: ``<0xNN>`` is one raw byte, ``▁`` a space."""
    match = _BYTE_FALLBACK.fullmatch(token)
    if match:
        return bytes([int(match.group(1), 16)])
    return token.replace(_SPIECE_SPACE, " ").encode()


def _walk_decoders(node: Any) -> Iterator[dict[str, Any]]:
    """Every decoder in a serialized decoder tree (``Sequence`` nests them)."""
    if isinstance(node, dict):
        yield node
        for child in node.get("decoders") or ():
            yield from _walk_decoders(child)


def _decoder_types(tokenizer: Any) -> set[str]:
    decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
    if decoder is None:
        return set()
    # The decoder's own JSON: serializing the whole tokenizer would copy the vocabulary too.
    tree = json.loads(decoder.__getstate__())
    return {str(node.get("type")) for node in _walk_decoders(tree)}


def _is_sentencepiece(tokenizer: Any, decoders: set[str]) -> bool:
    # Fast tokenizers show it in their decoder; slow ones carry the ``sp_model`` itself.
    return bool(decoders & {"Metaspace", "ByteFallback"}) or hasattr(tokenizer, "sp_model")


def _token_converter(tokenizer: Any) -> Callable[[str], bytes]:
    decoders = _decoder_types(tokenizer)
    if "ByteLevel" in decoders:
        return byte_level_bytes
    if _is_sentencepiece(tokenizer, decoders):
        return sentencepiece_bytes
    return lambda token: str(tokenizer.convert_tokens_to_string([token])).encode()


def _added_tokens(tokenizer: Any) -> dict[int, str]:
    """Added (incl. special) tokens by id: their content is literal text, never byte-mapped."""
    added = getattr(tokenizer, "added_tokens_decoder", None) or {}
    return {int(i): str(getattr(tok, "content", tok)) for i, tok in added.items()}


def token_bytes_converter(tokenizer: Any) -> Callable[[int], bytes]:
    """Bytes of one token id at a time, for when only a few ids are needed."""
    convert = _token_converter(tokenizer)
    added = _added_tokens(tokenizer)

    def one(token_id: int) -> bytes:
        if token_id in added:
            return added[token_id].encode()
        token = tokenizer.convert_ids_to_tokens(token_id)
        return b"" if token is None else convert(token)

    return one


def build_token_bytes(tokenizer: Any) -> list[bytes]:
    """Raw bytes of every token id, ``len(tokenizer)`` entries (ids with no token: ``b""``)."""
    convert = _token_converter(tokenizer)
    added = _added_tokens(tokenizer)
    # One batched lookup: a per-id call costs ~10x more on a 50k vocabulary.
    tokens = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    out: list[bytes] = []
    for token_id, token in enumerate(tokens):
        if token_id in added:
            out.append(added[token_id].encode())
        elif token is None:
            out.append(b"")
        else:
            out.append(convert(token))
    return out


def token_text(raw: bytes) -> str:
    """Readable text of a token's bytes: a partial character shows as ``\\xe6\\x97``, so the
    result never holds U+FFFD unless the token really is that character."""
    return raw.decode("utf-8", errors="backslashreplace")
