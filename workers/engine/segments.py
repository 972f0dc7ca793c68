"""Decode attention in a few row segments, each over only the columns its rows use.

Why.  The batch KV cache is left-padded (kv_cache.py): every row spans the longest row's
columns, and a decode step's attention reads all of them, padding included.  On a trace of
scenario 4's shape (prompts and outputs of mixed lengths) 45 % of the row-columns read are
padding, and at 24-40 rows on a 2-core EPYC decode attention is a third of the step (it reads
each layer's keys and values from memory: ~16 GB/s).  One SDPA call per row would read only
real columns, but costs a call per row and layer (30 layers x 24 rows of ~15 us: more than it
saves).  In between: split the rows, in the cache's own order (no copy: each segment is a view
of consecutive rows), into a few segments, each attending over the columns from its earliest
row's first real one.  On those traces up to four segments read 0.68-0.69 of the row-columns
one call reads.

`plan` splits greedily: the split that saves the most row-columns, again and again, while a
split saves at least ``min_gain`` (what an extra call costs, in row-columns) and at most
``max_segments`` are made.  (Greedy: a block of short rows between long ones at both ends is
only carved out when one of its two cuts saves something alone; the cache's order rarely does
that, as rows join at the end.)  Rows in a segment keep the mask's columns they do not use within
its window; only whole columns of padding on the segment's left are skipped.  Every skipped
column is one the mask excluded, so the outputs are the same attention (summed in other
blocks: float rounding may differ in the last bits).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import NamedTuple

MAX_SEGMENTS = 4
# An extra SDPA call a layer (slicing, the call, its share of the concatenation) costs about
# what reading ~200-300 row-columns of a layer's keys and values does on a 2-core CPU.
MIN_GAIN = 256


class Segment(NamedTuple):
    rows: slice  # consecutive rows of the cache, in its own (physical) order
    start: int  # the first column any of them uses
    padded: bool  # whether some row of it starts later (the mask is still needed)


def plan(starts: Sequence[int], max_segments: int = MAX_SEGMENTS, min_gain: int = MIN_GAIN) -> list[Segment]:
    """Segments for rows whose first real column is ``starts[i]`` (columns run to a common end)."""
    cuts = [0, len(starts)]
    while len(cuts) - 1 < max_segments:
        gain, at = max((_best_split(starts, a, b) for a, b in itertools.pairwise(cuts)), default=(0, 0))
        if gain < min_gain:
            break
        cuts.append(at)
        cuts.sort()
    return [_segment(starts, a, b) for a, b in itertools.pairwise(cuts)]


def _segment(starts: Sequence[int], a: int, b: int) -> Segment:
    part = starts[a:b]
    return Segment(slice(a, b), min(part), max(part) > min(part))


def _best_split(starts: Sequence[int], a: int, b: int) -> tuple[int, int]:
    """(row-columns saved, where) by the best split of rows ``[a, b)`` in two."""
    part = starts[a:b]
    if len(part) < 2:
        return 0, a
    left = list(itertools.accumulate(part, min))  # left[i]: min of part[: i + 1]
    right = list(itertools.accumulate(reversed(part), min))[::-1]  # right[i]: min of part[i:]
    # Columns run to a common end: a row-range costs rows x (end - its first column).  The
    # end cancels out of the saving, so it is left out: saving = sum of rows x first columns.
    whole = len(part) * left[-1]
    best, at = 0, a
    for i in range(1, len(part)):
        saving = i * left[i - 1] + (len(part) - i) * right[i] - whole
        if saving > best:
            best, at = saving, a + i
    return best, at
