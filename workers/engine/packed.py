"""One forward pass over the decode rows and a prefill chunk together (chunked prefill).

A forward pass of a small model on CPU costs a fixed ~50 ms (every weight is read once,
whatever the number of tokens) plus ~1 ms per token: a prefill pass of its own would stall
every decoding row for a whole pass.  So the decode rows' new tokens and a chunk of the
joining prompts go through the model as one packed sequence of ``R + k*c`` tokens (batch 1):
embeddings, linear layers and norms run once over all of them, each token with its own
position id.  Only attention differs per part, and `_attention` does each part apart:

- the ``R`` decode tokens, one per row of the batch cache (`BatchCache`, left-padded), each
  attending to its row's columns and itself, exactly as a decode pass does (on CPU in a few
  segments of consecutive rows, each over the columns its rows use: segments.py);
- the ``k`` prompt rows' chunk of ``c`` columns (left-padded like a whole prefill), attending
  causally to the columns of earlier chunks and to themselves.

The model's attention layers hand their new keys and values to `_PackedCache.update`, which
writes each part into its own cache, and then call the attention function named by the
config: for the pass, that name is swapped for ours (`_PACKED`), and the mask the model would
build is replaced by a placeholder (a 4-D mask is taken as given; ours builds its own).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.cache_utils import DynamicCache

from workers.engine import llama_forward
from workers.engine.kv_cache import BatchCache, GrowableLayer
from workers.engine.segments import Segment, plan

_PACKED = "tokenrelay_packed"


class Prompts:
    """Left-padded prompts prefilled over one or more passes: the KV of columns ``[0, done)``
    is in `layers` (one `GrowableLayer` per model layer, made by the first chunk)."""

    def __init__(self, prompts: list[list[int]], device: torch.device) -> None:
        width = max(len(p) for p in prompts)
        ids = torch.zeros((len(prompts), width), dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            mask[r, width - len(p) :] = 1
        self.ids, self.mask = ids.to(device), mask.to(device)
        self.positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        self.done = 0
        self.layers: list[GrowableLayer] = []

    @property
    def rows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def width(self) -> int:
        return int(self.ids.shape[1])

    @property
    def remaining(self) -> int:
        return self.width - self.done

    def tokens(self) -> int:
        """Real (unpadded) prompt tokens."""
        return int(self.mask.sum())

    def cache(self) -> BatchCache:
        """The finished prompts' KV as a batch cache (no copy)."""
        assert self.remaining == 0
        return BatchCache.of_layers(self.layers, self.mask, self.mask.sum(dim=1))


class _Pack:
    """What one packed pass needs at every layer: where each part's keys go and its masks."""

    def __init__(self, cache: BatchCache | None, prompts: Prompts | None, columns: int) -> None:
        self.cache, self.prompts = cache, prompts
        self.decode_rows = cache.rows if cache is not None else 0
        self.decode_mask: torch.Tensor | None = None
        self.chunk_mask: torch.Tensor | None = None
        self._biases: tuple[torch.Tensor | None, torch.Tensor | None] | None = None  # made at the first layer
        self.start = self.stop = 0
        if cache is not None and not bool(cache.mask.all()):
            # Each row sees its real columns and the new token (rows, 1, 1, T+1).  With no
            # padding at all (one row, or rows of equal length) it sees every column: no mask,
            # and SDPA takes its unmasked kernel (one row here: 45 -> 25 us a layer).
            mask = torch.cat([cache.mask, cache.mask.new_ones((cache.rows, 1))], dim=1)
            self.decode_mask = mask.bool()[:, None, None, :]
        # With padding, a few row segments over their own columns read less (segments.py).  On
        # CPU only: the plan reads the mask back, and a GPU reads padding faster than it calls.
        self.segments: list[Segment] | None = None
        if self.decode_mask is not None and cache is not None and cache.mask.device.type == "cpu":
            segments = plan(cache.mask.argmax(dim=1).tolist())
            self.segments = segments if len(segments) > 1 else None
        if prompts is not None:
            self.start, self.stop = prompts.done, min(prompts.width, prompts.done + columns)
            self.chunk_mask = _chunk_mask(prompts.mask[:, : self.stop].bool(), self.start)

    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        r = self.decode_rows
        if self.cache is not None:  # (1, H, R, d) -> one new column per row (R, H, 1, d)
            self.cache.layers[layer].update(
                keys[0, :, :r, None].transpose(0, 1), values[0, :, :r, None].transpose(0, 1)
            )
        if self.prompts is not None:  # (1, H, k*c, d) -> (k, H, c, d)
            k, c = self.prompts.rows, self.stop - self.start
            pk = keys[0, :, r:].unflatten(1, (k, c)).transpose(0, 1)
            pv = values[0, :, r:].unflatten(1, (k, c)).transpose(0, 1)
            if self.start == 0:
                self.prompts.layers.append(GrowableLayer(pk, pv))
            else:
                self.prompts.layers[layer].update(pk, pv)

    def attend(self, module: Any, query: torch.Tensor, scaling: float | None) -> torch.Tensor:
        """Both parts' attention output, packed again: (1, R + k*c, heads, head_dim)."""
        layer, r, q = module.layer_idx, self.decode_rows, query[0]
        any_kv = (self.cache or self.prompts).layers[layer]  # type: ignore[union-attr]
        decode_bias, chunk_bias = self._masks_as_biases(query.dtype, query.shape[1] // any_kv.k_view.shape[1])
        parts = []
        if self.cache is not None:
            kv, qd = self.cache.layers[layer], q[:, :r, None].transpose(0, 1)
            if self.segments is None:
                parts.append(_attention_of(qd, kv.k_view, kv.v_view, decode_bias, scaling).flatten(0, 1))
            for s in self.segments or ():  # consecutive rows each: their outputs stay in row order
                bias = decode_bias[s.rows, :, :, s.start :] if s.padded and decode_bias is not None else None
                k, v = kv.k_view[s.rows, :, s.start :], kv.v_view[s.rows, :, s.start :]
                parts.append(_attention_of(qd[s.rows], k, v, bias, scaling).flatten(0, 1))
        if self.prompts is not None:
            k, c = self.prompts.rows, self.stop - self.start
            kv = self.prompts.layers[layer]
            qc = q[:, r:].unflatten(1, (k, c)).transpose(0, 1)
            parts.append(_attention_of(qc, kv.k_view, kv.v_view, chunk_bias, scaling).flatten(0, 1))
        return torch.cat(parts)[None]

    def _masks_as_biases(self, dtype: torch.dtype, g: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The masks as SDPA's additive form (0 or -inf), made once for every layer of the pass:
        given a bool mask, SDPA converts it at every call (two ``where`` a layer: ~0.8 ms of a
        32-row step here, and the chunk mask's repeat for every layer besides).
        The chunk's rows repeat for the ``g`` query heads that share a key head (see
        `_attention_of`)."""
        if self._biases is None:
            chunk = self.chunk_mask.repeat(1, 1, g, 1) if self.chunk_mask is not None and g > 1 else self.chunk_mask
            self._biases = (_bias(self.decode_mask, dtype), _bias(chunk, dtype))
        return self._biases


def _attention_of(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor | None, scaling: float | None
) -> torch.Tensor:
    """SDPA of queries (b, heads, n, d) over keys and values (b, kv_heads, t, d) with an additive
    mask (b, 1, g * n, t) (a decode step's n = 1: (b, 1, 1, t)); out (b, n, heads, d).  The ``g``
    query heads that share a key head (GQA) become ``g`` times as many queries of that head,
    instead of copying the keys and values ``g`` times as transformers does whenever there is a
    mask (``repeat_kv``: at a few hundred columns that copy costs more than the attention
    itself)."""
    b, heads, n, d = query.shape
    g = heads // keys.shape[1]
    q = query.reshape(b, keys.shape[1], g * n, d)  # head h = kv_head * g + j: its query i at j * n + i
    out = torch.nn.functional.scaled_dot_product_attention(q, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(b, heads, n, d).transpose(1, 2)


def _bias(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask as SDPA's additive one: what SDPA itself makes of it, so the same numbers."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


def _chunk_mask(real: torch.Tensor, start: int) -> torch.Tensor:
    """(k, 1, c, start + c): query column ``start + i`` sees the real columns up to itself.  A
    padding query that sees nothing at all sees everything instead: its output is never used,
    but it must stay finite (SDPA gives NaN for a row of nothing, and NaN spreads)."""
    stop = real.shape[1]
    queries = torch.arange(start, stop, device=real.device)[:, None]
    causal = torch.arange(stop, device=real.device)[None, :] <= queries  # (c, stop)
    mask = causal[None] & real[:, None, :]
    mask |= ~mask.any(dim=-1, keepdim=True)
    return mask[:, None]


_active: contextvars.ContextVar[_Pack | None] = contextvars.ContextVar("tokenrelay_pack", default=None)


def _attention(module: Any, query: torch.Tensor, key: Any, value: Any, mask: Any, **kwargs: Any) -> tuple[Any, None]:
    pack = _active.get()
    assert pack is not None, "the packed attention runs only inside packed_forward"
    return pack.attend(module, query, kwargs.get("scaling")), None


AttentionInterface.register(_PACKED, _attention)


class _PackedCache(DynamicCache):
    """Hands each layer's new keys and values to the pack (they go to two caches)."""

    def __init__(self, pack: _Pack) -> None:
        super().__init__()
        self.pack = pack

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> Any:
        self.pack.store(layer_idx, key_states, value_states)
        return key_states, value_states  # unused: `_attention` reads the two caches

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0


def packable(model: Any) -> bool:
    """Whether `packed_forward` is right for this model: every layer attends to the whole
    context (no sliding windows: `_attention` builds full causal masks)."""
    config = model.config
    types = getattr(config, "layer_types", None) or ["full_attention"]
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return all(t == "full_attention" for t in types) and not sliding


@contextmanager
def _packed_attention(model: Any, pack: _Pack) -> Iterator[None]:
    config = model.config
    original = config._attn_implementation
    token = _active.set(pack)
    config._attn_implementation = _PACKED
    try:
        yield
    finally:
        config._attn_implementation = original
        _active.reset(token)


def packed_forward(
    model: Any,
    cache_arg: str,
    cache: BatchCache | None,
    tokens: list[int],
    prompts: Prompts | None,
    columns: int,
    lean: bool = False,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """One pass: a new token for every row of ``cache`` (``tokens``, in the engine's row order)
    and the next ``columns`` columns of ``prompts``; through `llama_forward` if ``lean`` (it
    must support the model), else through the model's own forward.  Returns the decode rows' logits (engine
    order) and, once the prompts are complete, each prompt row's next-token logits."""
    pack = _Pack(cache, prompts, columns)
    device = next(model.parameters()).device
    ids, positions = [], []
    if cache is not None:  # the cache's rows are in their own order (kv_cache.py)
        ids.append(torch.tensor(cache.physical(tokens), dtype=torch.long, device=device))
        positions.append(cache.positions)
    if prompts is not None:
        ids.append(prompts.ids[:, pack.start : pack.stop].flatten())
        positions.append(prompts.positions[:, pack.start : pack.stop].flatten())
    r = pack.decode_rows
    completes = prompts is not None and pack.stop == prompts.width
    # Only these tokens need logits (the lm head is a quarter of the model); the decode rows'
    # tokens in the engine's row order: gathering r hidden states here spares reordering
    # r x vocab logits after the head (`BatchCache.logical`).
    keep = list(cache.order) if cache is not None else []
    if completes:
        c = pack.stop - pack.start
        keep += [r + (row + 1) * c - 1 for row in range(prompts.rows)]  # type: ignore[union-attr]
    keep_idx = torch.tensor(keep, dtype=torch.long, device=device)
    if lean:  # the same kernels without transformers' plumbing (llama_forward.py)
        logits = llama_forward.forward(model, torch.cat(ids), torch.cat(positions), pack, keep_idx)
    else:
        with _packed_attention(model, pack):
            out = model(
                input_ids=torch.cat(ids)[None],
                position_ids=torch.cat(positions)[None],
                attention_mask=torch.ones((1, 1, 1, 1), dtype=torch.bool, device=device),  # a placeholder
                use_cache=True,
                logits_to_keep=keep_idx,
                **{cache_arg: _PackedCache(pack)},
            )
        logits = out.logits[0]
    decoded = None
    if cache is not None:
        cache.append_step()
        decoded = logits[:r]
    if prompts is not None:
        prompts.done = pack.stop
    return decoded, (logits[r:] if completes else None)
