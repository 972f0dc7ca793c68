"""Picking up a request that another worker started (a redelivered task).

The stream says what was published: per choice its token ids and, if it ended, its finish
reason; the next ``seq``.  The new worker replays the published tokens through a fresh
detokenizer and skips what was already sent (text and ids).  Tokens held back by the dead
worker (split characters, possible stop strings) were never published, so they are
generated again; with a seed the sampler draws exactly what it would have drawn (its
draws depend only on seed, choice and position).
"""

from __future__ import annotations

from collections.abc import Sequence

from schemas.records import Record
from workers.engine.output import Resume  # torch-free: reading a stream needs no model


def resume_state(records: Sequence[Record]) -> Resume | None:
    """None when nothing was published yet."""
    if not records:
        return None
    tokens: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    finished: dict[int, str] = {}
    for r in records:
        tokens.setdefault(r.index, []).extend(r.token_ids)
        texts[r.index] = texts.get(r.index, "") + r.text
        if r.finish_reason is not None:
            finished[r.index] = r.finish_reason
    return Resume(next_seq=records[-1].seq + 1, tokens=tokens, texts=texts, finished=finished)


def is_complete(records: Sequence[Record]) -> bool:
    return bool(records) and records[-1].is_last
