"""The Llama family's forward pass written out for the packed pass (nano-vllm's own model code).

Why.  At a few rows on CPU, transformers' forward spends a tenth of a pass outside the kernels:
module calls, keyword plumbing, output-capture decorators, a mask the packed pass replaces
anyway.  SmolLM2-135M, one decode row over 100 columns, 2-core EPYC: 34.0 ms through
transformers, 30.5 ms here.  The kernels are the same and run in the same order (the layers'
own weights, the prepacked products of cpu_linear.py, the rotary module, packed.py's
attention), so the logits are the same numbers; only the Python between them is less.

It applies to models built like Llama (`supports`): per layer an RMS norm, q/k/v projections
with rotary embeddings, attention, an output projection, a second RMS norm and a gated MLP,
each added to the residual; no hooks on any module (an offloading ``device_map`` puts some
there).  Every other model, or ``TOKENRELAY_LEAN_FORWARD=0``, runs transformers' forward.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from workers.engine.cpu_linear import FusedPart, FusedProduct

# Model types whose decoder layers are Llama's (Mistral's and Qwen2's sliding windows are
# refused earlier by packed.packable).
LLAMA_LIKE = frozenset({"llama", "mistral", "qwen2"})


class Pack(Protocol):
    def store(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None: ...
    def attend(self, module: Any, query: torch.Tensor, scaling: float | None) -> torch.Tensor: ...


def supports(model: Any) -> bool:
    """Whether `forward` computes what ``model``'s own forward does."""
    inner = getattr(model, "model", None)
    if getattr(model.config, "model_type", None) not in LLAMA_LIKE or inner is None:
        return False
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if not all(hasattr(inner, name) for name in needed) or not hasattr(model, "lm_head"):
        return False
    for layer in inner.layers:
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        parts = (attn, mlp, getattr(layer, "input_layernorm", None), getattr(layer, "post_attention_layernorm", None))
        if any(p is None for p in parts):
            return False
        if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj", "scaling", "head_dim")):
            return False
        if hasattr(attn, "q_norm") or not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            return False
    return not any(m._forward_hooks or m._forward_pre_hooks or hasattr(m, "_hf_hook") for m in model.modules())


def forward(model: Any, ids: torch.Tensor, positions: torch.Tensor, pack: Pack, keep: torch.Tensor) -> torch.Tensor:
    """Logits (len(keep), vocab) of the packed tokens ``ids`` (N,) at ``positions`` (N,), for
    the token indices ``keep``; each layer's keys and values go to ``pack``."""
    inner = model.model
    x = inner.embed_tokens(ids[None])  # (1, N, hidden)
    rope = Rope(*inner.rotary_emb(x, positions[None]))
    for i, layer in enumerate(inner.layers):
        x = _layer(layer, i, x, rope, pack)
    x = _norm(inner.norm, x)
    return _linear(model.lm_head, x[0, keep])


class Rope:
    """The rotary embedding of one pass, applied as transformers' ``apply_rotary_pos_emb`` does
    (``x * cos + rotate_half(x) * sin``) in fewer ops: ``rotate_half(x) * sin`` is
    ``roll(x, half) * sin`` with the first half of ``sin`` negated, made once a pass
    (negation is exact, so the products are the same numbers), and a layer's queries and keys
    turn in one call where one product made them (`_attention_inputs`): 4 ops for both instead
    of 6 for each.  Small: 1-2 % of a pass on a 2-core Xeon (one row 38.4 -> 38.1 ms, 16 rows
    84.9 -> 83.4 ms, alternating in one process); the linear products are three quarters of it."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        half = sin.shape[-1] // 2
        self.half = half
        self.cos = cos[:, None]  # (1, 1, N, head_dim): broadcast over heads
        self.sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)[:, None]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (1, heads, N, head_dim) turned."""
        return (x * self.cos) + (x.roll(self.half, -1) * self.sin)


def _layer(layer: Any, i: int, x: torch.Tensor, rope: Rope, pack: Pack) -> torch.Tensor:
    attn, mlp, n = layer.self_attn, layer.mlp, x.shape[1]
    q, k, v = _attention_inputs(attn, _norm(layer.input_layernorm, x), rope)
    pack.store(i, k, v)
    out = pack.attend(attn, q, attn.scaling)  # (1, N, heads, head_dim)
    x = x + _linear(attn.o_proj, out.reshape(1, n, -1))
    gate, up = _siblings((mlp.gate_proj, mlp.up_proj), _norm(layer.post_attention_layernorm, x))
    return x + _linear(mlp.down_proj, mlp.act_fn(gate) * up)


def _attention_inputs(attn: Any, h: torch.Tensor, rope: Rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Queries and keys turned, and values, each (1, heads, N, head_dim).  Where one product
    made all three, its query and key columns are next to each other: one turn for both."""
    n, d = h.shape[1], attn.head_dim
    product = _product_of((attn.q_proj, attn.k_proj, attn.v_proj))
    if product is None:
        q, k, v = (_linear(m, h).view(1, n, -1, d).transpose(1, 2) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        return rope(q), rope(k), v
    out = product.whole(h)  # (1, N, (q_heads + kv_heads + kv_heads) * head_dim)
    q_cols, qk_cols = product.sizes[0], product.sizes[0] + product.sizes[1]
    qk = rope(out[..., :qk_cols].unflatten(-1, (-1, d)).transpose(1, 2))
    v = out[..., qk_cols:].unflatten(-1, (-1, d)).transpose(1, 2)
    return qk[:, : q_cols // d], qk[:, q_cols // d :], v


def _norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """LlamaRMSNorm's arithmetic (in float32, back to the input's dtype), without the call."""
    h = x if x.dtype == torch.float32 else x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * (h if x.dtype == torch.float32 else h.to(x.dtype))


def _linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    return module.forward(x)  # supports() found no hooks: the call machinery is not needed


def _product_of(modules: tuple[Any, ...]) -> FusedProduct | None:
    """The one product cpu_linear fused exactly these sibling layers into, if it did."""
    first = modules[0]
    if not isinstance(first, FusedPart):
        return None
    product = first.product
    if len(product.sizes) != len(modules):
        return None
    if all(isinstance(m, FusedPart) and m.product is product and m.index == j for j, m in enumerate(modules)):
        return product
    return None


def _siblings(modules: tuple[Any, ...], x: torch.Tensor) -> list[torch.Tensor]:
    """The projections of ``x`` by sibling layers: one product when cpu_linear fused them."""
    product = _product_of(modules)
    if product is not None:
        return product.project(x)
    return [_linear(m, x) for m in modules]
