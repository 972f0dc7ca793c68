"""The one invariant checker of the fault suite: what every stream must look like, whatever
happened to workers, servers and connections while it was written.

Read straight from the server (XRANGE), not through a reader, so that the checker does not
share the code it checks."""

from __future__ import annotations

from collections.abc import Sequence

import redis

from schemas import Record, decode, keys


def raw_records(client: redis.Redis, request_id: str) -> list[Record]:
    return [decode(fields[b"r"], eid.decode()) for eid, fields in client.xrange(keys.deltas_key(request_id))]


def check_stream(records: Sequence[Record], n: int = 1, *, complete: bool = True) -> None:
    """seq 0..N-1 with increasing entry ids; each choice ends exactly once and says nothing
    after its end; usage only on the very last record; a complete stream has it."""
    assert [r.seq for r in records] == list(range(len(records))), [r.seq for r in records]
    ids = [tuple(int(p) for p in (r.entry_id or "").split("-")) for r in records]
    assert ids == sorted(set(ids)), "entry ids repeat or go backwards"
    ended: dict[int, int] = {}
    for r in records:
        assert 0 <= r.index < n, f"choice {r.index} of n={n}"
        assert r.index not in ended, f"seq {r.seq}: choice {r.index} wrote after its final record"
        if r.finish_reason is not None:
            ended[r.index] = r.seq
    assert all(r.usage is None for r in records[:-1]), "usage before the last record"
    if complete:
        assert records, "no records"
        assert sorted(ended) == list(range(n)), f"choices that ended: {sorted(ended)} of {n}"
        assert records[-1].usage is not None, "the last record has no usage"


def tokens_of(records: Sequence[Record], index: int) -> list[int]:
    return [t for r in records if r.index == index for t in r.token_ids]


def text_of(records: Sequence[Record], index: int) -> str:
    return "".join(r.text for r in records if r.index == index)
