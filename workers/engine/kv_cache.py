"""A batch KV cache whose rows can join and leave between steps.

Rows are left-padded to one length ``T``: row ``r``'s real tokens sit at the right end of
its columns and ``mask[r]`` marks them.  Each row carries its own position ids, so RoPE
sees every row's true positions whatever its padding.  Joining rows pads the shorter side
on the left; leaving rows are dropped with an index select, and columns that have become
padding in every row are trimmed.

Each layer keeps keys and values in a buffer with spare capacity and hands the model views
of the filled part, so a decode step appends in place instead of copying the whole cache
(``DynamicCache`` concatenates, which copies all ``T`` columns of every layer per step).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer

_GROW = 64  # spare columns allocated at a time


class GrowableLayer(DynamicLayer):
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        super().__init__()
        self.dtype, self.device = keys.dtype, keys.device
        self.is_initialized = True
        self._set(keys, values)

    def _set(self, keys: torch.Tensor, values: torch.Tensor, spare: int = _GROW) -> None:
        b, h, t, d = keys.shape
        self._k = keys.new_zeros((b, h, t + spare, d))
        self._v = values.new_zeros((b, values.shape[1], t + spare, values.shape[3]))
        self._k[:, :, :t] = keys
        self._v[:, :, :t] = values
        self._len = t
        self._expose()

    def _expose(self) -> None:
        # Views of the filled part; ``keys``/``values`` are what transformers reads.
        self.k_view = self._k[:, :, : self._len]
        self.v_view = self._v[:, :, : self._len]
        self.keys, self.values = self.k_view, self.v_view

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: object, **kwargs: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n = key_states.shape[-2]
        if self._len + n > self._k.shape[2]:
            self._set(self.k_view, self.v_view, spare=max(_GROW, n))
        self._k[:, :, self._len : self._len + n] = key_states
        self._v[:, :, self._len : self._len + n] = value_states
        self._len += n
        self._expose()
        return self.k_view, self.v_view

    def get_seq_length(self) -> int:
        return self._len

    def reshape(self, rows: torch.Tensor | None, left_pad: int, trim: int) -> None:
        """Keep ``rows`` (None = all), then drop ``trim`` leading columns and add ``left_pad``."""
        k, v = self.k_view, self.v_view
        if rows is not None:
            k, v = k.index_select(0, rows), v.index_select(0, rows)
        k, v = k[:, :, trim:], v[:, :, trim:]
        if left_pad:
            k = torch.nn.functional.pad(k, (0, 0, left_pad, 0))
            v = torch.nn.functional.pad(v, (0, 0, left_pad, 0))
        self._set(k, v)


class BatchCache:
    """Keys/values of every layer for the running rows, plus their mask and positions."""

    def __init__(self, cache: DynamicCache, mask: torch.Tensor, positions: torch.Tensor) -> None:
        self.layers = [GrowableLayer(layer.keys, layer.values) for layer in cache.layers]  # type: ignore[union-attr,arg-type]
        self.mask = mask  # (rows, T) long, 1 = real token
        self.positions = positions  # (rows,) long: position id of each row's next token

    @property
    def rows(self) -> int:
        return int(self.mask.shape[0])

    @property
    def length(self) -> int:
        return int(self.mask.shape[1])

    @property
    def nbytes(self) -> int:
        """Bytes of every layer's key and value buffers (spare columns included)."""
        return sum(layer._k.nbytes + layer._v.nbytes for layer in self.layers)

    def as_hf_cache(self) -> DynamicCache:
        cache = DynamicCache()
        cache.layers = list(self.layers)
        return cache

    def append_step(self) -> None:
        """Called after a decode step wrote one column to every layer."""
        self.mask = torch.cat([self.mask, self.mask.new_ones((self.rows, 1))], dim=1)
        self.positions = self.positions + 1

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order; a row may repeat, to fork choices)."""
        idx = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        mask = self.mask.index_select(0, idx)
        trim = _leading_padding(mask)
        for layer in self.layers:
            layer.reshape(idx, 0, trim)
        self.mask = mask[:, trim:]
        self.positions = self.positions.index_select(0, idx)

    def extend(self, other: BatchCache) -> None:
        """Append ``other``'s rows after ours, padding the shorter one on the left."""
        t = max(self.length, other.length)
        for mine, theirs in zip(self.layers, other.layers, strict=True):
            mine.reshape(None, t - self.length, 0)
            theirs.reshape(None, t - other.length, 0)
            mine._set(torch.cat([mine.k_view, theirs.k_view]), torch.cat([mine.v_view, theirs.v_view]))
        pad = torch.nn.functional.pad
        self.mask = torch.cat([pad(self.mask, (t - self.length, 0)), pad(other.mask, (t - other.length, 0))])
        self.positions = torch.cat([self.positions, other.positions])


def _leading_padding(mask: torch.Tensor) -> int:
    real = mask.any(dim=0).nonzero()
    return int(real[0]) if real.numel() else int(mask.shape[1])
