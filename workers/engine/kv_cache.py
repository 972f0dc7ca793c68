"""A batch KV cache whose rows can join and leave between steps.

Rows are left-padded to one length ``T``: row ``r``'s real tokens sit at the right end of
its columns and ``mask[r]`` marks them.  Each row carries its own position ids, so RoPE
sees every row's true positions whatever its padding.

Each layer keeps keys and values in a buffer with spare rows and spare columns on both sides
and hands the model views of the filled part, so that the common changes copy only what changes:

- a decode step appends one column in place (``DynamicCache`` concatenates, which copies all
  ``T`` columns of every layer per step); columns grow geometrically when full;
- a row that leaves is filled by the last row (one row copied), so the buffer's rows are in
  their own order: ``order[j]`` is where the engine's row ``j`` sits, and the decode pass
  scatters its tokens into that order and gathers the logits back (`physical`, `logical`);
- a row that joins is written into a spare row, left-padded; a prompt longer than ``T`` first
  widens every row into the spare columns on the left (zeros written, nothing moved; with too
  few there but enough on the right, the filled part first moves right within the buffer);
- columns that became padding in every row (the longest rows left) are dropped by starting
  the views later; when the views reach the buffer's right end, they slide back over those
  columns in place (the live rows' columns copied within the buffer, no new memory).

At 64 rows and a few hundred columns the whole cache is around a gigabyte on CPU (fp32), and a
whole-cache copy into fresh memory costs 0.1-0.9 s: several decode steps, mostly the kernel
mapping the new pages.  Only a fork (``n`` choices), a reordering or running out of spare rows
or columns (geometric growth) does that.  On CPU the batch cache therefore reserves its buffer
once, at its first growth (`BatchCache.reserve`: room for every row the engine may run and as
many columns as a byte budget allows): the kernel maps a page of it only when a column is first
written there, so the reservation costs address space, not memory, and the memory grows a page
at a time as columns fill instead of in one stall every running stream sees.  (On a GPU memory
is taken when allocated: no reservation there; the caching allocator reuses freed blocks.)
"""

from __future__ import annotations

import itertools

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_GROW = 64  # spare columns allocated at least
_SPARE_ROWS = 8  # spare rows allocated at least when rows join
RESERVE_BYTES = 1 << 30  # CPU: the address space the batch cache takes at its first growth


class GrowableLayer(DynamicLayer):
    """One layer's keys and values: buffers with spare rows, spare columns on the right (for
    decode steps) and on the left (for a longer prompt joining); the filled part is columns
    ``[start, start + len)`` of the first ``rows`` rows."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._reserved = (0, 0)  # rows, columns: no buffer is allocated smaller (`reserve`)
        self._set(keys, values)

    def _set(
        self, keys: torch.Tensor, values: torch.Tensor, spare: int = _GROW, spare_rows: int = 0, left: int = 0
    ) -> None:
        # Not zero-filled: every column the views expose is written first (decode steps append,
        # `add_rows` and `widen` zero their padding), and zeroing a fresh buffer of a few hundred
        # MB here would fault all its pages in at once (~0.3-0.8 s on this VM) instead of a
        # page at a time as columns fill.  Masked columns must be finite (NaN * 0 weight is
        # still NaN): they are zeros or keys of padding tokens, never leftovers.
        b, h, t, d = keys.shape
        rows, columns = max(b + spare_rows, self._reserved[0]), max(left + t + spare, self._reserved[1])
        self._k = keys.new_empty((rows, h, columns, d))
        self._v = values.new_empty((rows, values.shape[1], columns, values.shape[3]))
        self._k[:b, :, left : left + t] = keys
        self._v[:b, :, left : left + t] = values
        self._rows, self._start, self._len = b, left, t
        self._expose()

    def _expose(self) -> None:
        # Views of the filled part; ``keys``/``values`` are what transformers reads.
        self.k_view = self._k[: self._rows, :, self._start : self._start + self._len]
        self.v_view = self._v[: self._rows, :, self._start : self._start + self._len]
        self.keys, self.values = self.k_view, self.v_view

    def reserve(self, rows: int, columns: int) -> None:
        """Every buffer allocated from now on (the next growth, a fork) holds at least
        ``rows`` rows and ``columns`` columns.  Nothing is allocated now: a request that runs
        alone and ends within its prefill's buffer never pays for the reservation."""
        self._reserved = (rows, columns)

    def _spare(self) -> tuple[int, int]:
        """Spare columns on the right and spare rows."""
        return self._k.shape[2] - self._start - self._len, self._k.shape[0] - self._rows

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if n > self._spare()[0]:
            if self._start >= max(n, _GROW // 2):  # the columns trimmed on the left make room
                self._slide_left()
            else:  # geometric: a full copy every ~T/2 steps, not every 64
                spare = max(_GROW, n, self._len // 2)
                self._set(self.k_view, self.v_view, spare, self._spare()[1], self._start)
        end = self._start + self._len
        self._k[: self._rows, :, end : end + n] = key_states
        self._v[: self._rows, :, end : end + n] = value_states
        self._len += n
        self._expose()
        return self.k_view, self.v_view

    def _slide_left(self) -> None:
        """Move the filled columns to the buffer's left edge, in place.  A window that only
        grows on the right and is trimmed on the left (long rows leaving) would otherwise reach
        the buffer's end every ``spare`` steps and be copied into fresh memory."""
        self._move_to(0)

    def _move_to(self, start: int) -> None:
        """Move the filled columns to start at column ``start``, in place: blocks of at most
        the shift, the end they move towards first, so no block's target overlaps a source not
        yet read."""
        shift, n = start - self._start, self._len
        if shift == 0:
            return
        step = abs(shift)
        blocks = [(lo, min(n, lo + step)) for lo in range(0, n, step)]
        for lo, hi in blocks if shift < 0 else reversed(blocks):
            src = slice(self._start + lo, self._start + hi)
            dst = slice(start + lo, start + hi)
            self._k[: self._rows, :, dst] = self._k[: self._rows, :, src]
            self._v[: self._rows, :, dst] = self._v[: self._rows, :, src]
        self._start = start
        self._expose()

    def get_seq_length(self) -> int:
        return self._len

    def reshape(self, rows: torch.Tensor | None, left_pad: int, trim: int) -> None:
        """Keep ``rows`` (None = all), then drop ``trim`` leading columns and add ``left_pad``:
        a copy of the whole layer."""
        k, v = self.k_view, self.v_view
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        k, v = k[:, :, trim:], v[:, :, trim:]
        if left_pad:
            k = torch.nn.functional.pad(k, (0, 0, left_pad, 0))
            v = torch.nn.functional.pad(v, (0, 0, left_pad, 0))
        self._set(k, v)

    def trim(self, columns: int) -> None:
        """Drop ``columns`` leading columns (padding in every row): the view starts later."""
        self._start += columns
        self._len -= columns
        self._expose()

    def widen(self, columns: int, rows: int) -> None:
        """Add ``columns`` columns of padding on the left of every row, and room for ``rows``
        more rows: into the spare columns and rows, so that a longer prompt joining copies no
        running row (unless they ran out: then one copy, with room to spare for the next)."""
        spare, spare_rows = self._spare()
        if columns > self._start and rows <= spare_rows and columns <= self._start + spare:
            # Room on the right (a reserved buffer): the filled part moves there, in place.
            self._move_to(columns + (self._start + spare - columns) // 2)
        elif columns > self._start or rows > spare_rows:
            spare_rows = max(spare_rows, _SPARE_ROWS, rows, self._rows // 2) if rows > spare_rows else spare_rows
            left = max(self._start, columns + max(_GROW, self._len // 2))
            self._set(self.k_view, self.v_view, spare, spare_rows, left)
        self._start -= columns
        self._k[: self._rows, :, self._start : self._start + columns] = 0
        self._v[: self._rows, :, self._start : self._start + columns] = 0
        self._len += columns
        self._expose()

    def move_row(self, source: int, target: int) -> None:
        """Row ``source`` (the last) fills row ``target``, and the last row goes."""
        cols = slice(self._start, self._start + self._len)
        self._k[target, :, cols] = self._k[source, :, cols]
        self._v[target, :, cols] = self._v[source, :, cols]

    def truncate(self, rows: int) -> None:
        self._rows = rows
        self._expose()

    def add_rows(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Append rows whose (left-padded) columns are no more than ours: right-aligned."""
        k, t = keys.shape[0], keys.shape[2]
        if k > self._spare()[1]:
            spare_rows = max(_SPARE_ROWS, k, self._rows // 2)
            self._set(self.k_view, self.v_view, self._spare()[0], spare_rows, self._start)
        pad, end = self._start + self._len - t, self._start + self._len
        for buf, new in ((self._k, keys), (self._v, values)):
            target = buf[self._rows : self._rows + k]
            target[:, :, self._start : pad] = 0  # what an earlier row left there: zeros, as padding
            target[:, :, pad:end] = new
        self._rows += k
        self._expose()


class BatchCache:
    """Keys/values of every layer for the running rows, plus their mask and positions (both in
    the buffer's row order), and ``order``: the buffer row of each of the engine's rows."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.layers = [GrowableLayer(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,arg-type]
        self.mask = mask  # (rows, T) long, 1 = real token
        self.positions = positions  # (rows,) long: position id of each row's next token
        self.order = list(range(int(mask.shape[0])))

    @classmethod
    def of_layers(cls, layers: list[GrowableLayer], mask: torch.Tensor, positions: torch.Tensor) -> BatchCache:
        """A cache of layers filled already (a prompt prefilled in chunks: packed.py)."""
        cache = cls.__new__(cls)
        cache.layers, cache.mask, cache.positions = layers, mask, positions
        cache.order = list(range(int(mask.shape[0])))
        return cache

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's key and value buffers (spare rows and columns included; on
        CPU a reservation's pages count before a column maps them)."""
        return sum(layer._k.nbytes + layer._v.nbytes for layer in self.layers)

    def reserve(self, rows: int, budget: int = RESERVE_BYTES) -> None:
        """On CPU: the next growth makes room for ``rows`` rows and as many columns as
        ``budget`` bytes of keys and values hold (all layers), as address space; see the module
        docstring."""
        if self.mask.device.type != "cpu":
            return
        per_column = sum(layer._k[:1, :, :1].nbytes + layer._v[:1, :, :1].nbytes for layer in self.layers)
        columns = budget // max(1, rows * per_column)
        for layer in self.layers:
            layer.reserve(rows, columns)

    def as_hf_cache(self) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = list(self.layers)
        return cache

    def physical(self, tokens: list[int]) -> list[int]:
        """The engine's per-row values in the buffer's row order."""
        out = [0] * len(tokens)
        for j, row in enumerate(self.order):
            out[row] = tokens[j]
        return out

    def logical(self, per_row: torch.Tensor) -> torch.Tensor:
        """Per-buffer-row results (logits) in the engine's row order."""
        if self.order == list(range(len(self.order))):
            return per_row
        return per_row.index_select(0, torch.tensor(self.order, dtype=torch.long, device=per_row.device))

    def append_step(self) -> None:
        """Called after a decode step wrote one column to every layer."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        self.positions = self.positions + 1

    # Buffers made during a forward pass are inference tensors: only updated in that mode.
    @torch.inference_mode()
    def keep(self, rows: list[int]) -> None:
        """Keep only the engine's ``rows`` (in that order; a row may repeat, to fork choices)."""
        kept = [self.order[i] for i in rows]
        trim = _leading_padding(self.mask.index_select(0, torch.tensor(kept, dtype=torch.long)))
        if _ascending(rows):
            self._remove(kept)  # rows leaving: each hole is filled by the last row
            if trim:  # columns that became padding in every row: the views start later
                for layer in self.layers:
                    layer.trim(trim)
                self.mask = self.mask[:, trim:]
            return
        idx = torch.tensor(kept, dtype=torch.long, device=self.mask.device)
        for layer in self.layers:
            layer.reshape(idx, 0, trim)
        self.mask = self.mask.index_select(0, idx)[:, trim:]
        self.positions = self.positions.index_select(0, idx)
        self.order = list(range(len(rows)))

    @torch.inference_mode()
    def extend(self, other: BatchCache) -> None:
        """Append ``other``'s rows after ours (in its engine order), padding the shorter one on
        the left."""
        pad = torch.nn.functional.pad
        t, n = max(self.length, other.length), self.rows
        theirs_idx = torch.tensor(other.order, dtype=torch.long, device=other.mask.device)
        if other.length <= self.length:  # the usual case: a short prompt joins a running batch
            for mine, theirs in zip(self.layers, other.layers, strict=True):
                mine.add_rows(theirs.k_view.index_select(0, theirs_idx), theirs.v_view.index_select(0, theirs_idx))
        else:  # a longer prompt: every running row gets padding on the left
            for mine, theirs in zip(self.layers, other.layers, strict=True):
                mine.widen(t - self.length, other.rows)
                mine.add_rows(theirs.k_view.index_select(0, theirs_idx), theirs.v_view.index_select(0, theirs_idx))
        their_mask = other.mask.index_select(0, theirs_idx)
        self.mask = torch.cat([pad(self.mask, (t - self.length, 0)), pad(their_mask, (t - other.length, 0))])
        self.positions = torch.cat([self.positions, other.positions.index_select(0, theirs_idx)])
        self.order = self.order + list(range(n, n + other.rows))

    def _remove(self, kept: list[int]) -> None:
        """Keep the buffer rows ``kept`` (the engine's new order): holes are filled from the end."""
        n = self.rows
        source = list(range(n))  # source[r]: the old buffer row now at buffer row r
        where = {row: row for row in kept}  # old buffer row -> its buffer row now
        for hole in sorted(set(range(n)) - set(kept), reverse=True):
            last = n - 1
            if hole != last:
                for layer in self.layers:
                    layer.move_row(last, hole)
                source[hole] = source[last]
                where[source[hole]] = hole
            n -= 1
        for layer in self.layers:
            layer.truncate(n)
        idx = torch.tensor(source[:n], dtype=torch.long, device=self.mask.device)
        self.mask = self.mask.index_select(0, idx)
        self.positions = self.positions.index_select(0, idx)
        self.order = [where[row] for row in kept]


def _ascending(rows: list[int]) -> bool:
    return all(a < b for a, b in itertools.pairwise(rows))


def _leading_padding(mask: torch.Tensor) -> int:
    real = mask.any(dim=0).nonzero()
    return int(real[0]) if real.numel() else int(mask.shape[1])
