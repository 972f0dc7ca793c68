"""Linear layers with their weights prepacked for oneDNN, on CPU.

Why.  A decode pass multiplies a few rows (one per running request) by every weight matrix,
and torch's default for that (MKL's sgemm on the plain row-major weight) handles such skinny
products poorly: on a 2-core AVX2 machine, SmolLM2-135M's 576x576 projection takes 230 us for
16 rows, its 49152x576 vocabulary projection 25 ms.  oneDNN, given each weight once reordered
into its own blocked layout, does them in 190 us and 12.5 ms: a whole 16-row decode pass
130 -> 83 ms, one row 63 -> 54 ms, four rows 107 -> 59 ms; from ~48 rows up (prefill chunks)
the two are alike.  This is what torch.compile's freezing pass and vLLM's CPU backend do to
linear layers; here it is done eagerly, once, at load time: every ``nn.Linear`` of the model
becomes a `PackedLinear` that holds the reordered weight (the plain one is dropped; a weight
tied to the input embeddings, as the vocabulary projection often is, keeps its original for
the embedding lookup, ~110 MB more for SmolLM2).

The results are the same products summed in another order (logits within ~1e-4 of MKL's in
fp32, a few units of bf16's last place in bf16); `prepack_linears` checks that on every
layer before swapping it in, and leaves the model as it is where oneDNN is missing or
disagrees.  ``TOKENRELAY_CPU_PREPACK=0`` turns it off.  GPUs are left alone (cuBLAS does not
need it).

Sibling projections that read the same input (``q_proj``/``k_proj``/``v_proj`` of an
attention layer, ``gate_proj``/``up_proj`` of an MLP) are packed as one weight and computed in
one product (`FusedProduct`), as vLLM's QKV and merged gate-up layers are: two products a
layer instead of five, each paying oneDNN's and OpenMP's fixed cost once.  For one to 48 rows
that saves ~1.2 ms a pass over SmolLM2's 30 layers on a 2-core EPYC (of a ~25 ms pass).  The
model's own code still calls each sibling; the first call computes the product and the
others take their slices of it (see `FusedProduct.take`).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# oneDNN's blocked kernels for these; bf16 ones are fast only with AVX512-BF16 or AMX, and a
# bf16 model is only loaded where the user asks for it (--dtype bfloat16).
_DTYPES = (torch.float32, torch.bfloat16)
# Children of one module that read the same input (the Llama family's names; Mistral, Qwen2,
# SmolLM and most decoder-only models on the Hub use them too).
FUSED_SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def _product(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class PackedLinear(torch.nn.Module):
    """``nn.Linear``'s forward over a oneDNN-reordered weight."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.packed = _pack(linear.weight)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _product(x, self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedProduct:
    """Sibling linear layers (same input) as one reordered weight: one product for all.

    The model calls each sibling in turn with the same tensor (``q_proj(x)``, ``k_proj(x)``,
    ``v_proj(x)``).  The first call computes the whole product for ``x`` and returns its
    slice; each other sibling takes its slice of that product, and the product is let go once
    every slice is taken.  ``x`` is recognised by identity (held, so its id cannot be reused):
    a sibling called with another tensor, or twice with the same one, computes a fresh
    product, so a model that calls its siblings some other way still gets the right values,
    only not faster.  Not thread-safe: one engine thread runs the model.
    """

    def __init__(self, linears: list[torch.nn.Linear]) -> None:
        self.sizes = [linear.out_features for linear in linears]
        self.packed = _pack(torch.cat([linear.weight.detach() for linear in linears]))
        biases = [linear.bias for linear in linears]
        self.bias = None if biases[0] is None else torch.cat([b.detach() for b in biases if b is not None])
        self._input: torch.Tensor | None = None
        self._parts: list[torch.Tensor | None] = []

    def whole(self, x: torch.Tensor) -> torch.Tensor:
        """Every sibling's projection of ``x`` side by side (the ``sizes`` along the last dim)."""
        return _product(x, self.packed, self.bias)

    def project(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every sibling's projection of ``x``, from one product (llama_forward.py calls this)."""
        return list(self.whole(x).split(self.sizes, dim=-1))

    def take(self, index: int, x: torch.Tensor) -> torch.Tensor:
        if x is not self._input or self._parts[index] is None:
            self._input, self._parts = x, list(self.project(x))
        part = self._parts[index]
        assert part is not None
        self._parts[index] = None
        if all(p is None for p in self._parts):
            self._input, self._parts = None, []
        return part


class FusedPart(torch.nn.Module):
    """One sibling of a `FusedProduct`: ``nn.Linear``'s forward, its slice of the product."""

    def __init__(self, product: FusedProduct, index: int, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.product, self.index = product, index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product.take(self.index, x)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, part {self.index} of a fused product"


def available(model: Any) -> bool:
    """Whether prepacking applies: a CPU model of a dtype oneDNN runs well, and the ops exist."""
    param = next(model.parameters())
    return (
        param.device.type == "cpu"
        and param.dtype in _DTYPES
        and torch.backends.mkldnn.is_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )


@torch.inference_mode()
def prepack_linears(model: Any, fuse: bool = True) -> int:
    """Swap every ``nn.Linear`` of ``model`` for a `PackedLinear` that computes the same (checked
    on a random input per layer), siblings of `FUSED_SIBLINGS` for `FusedPart`s of one product
    unless ``fuse`` is False; the number of layers swapped.  0 where it does not apply."""
    if not available(model):
        return 0
    swapped = 0
    for parent in list(model.modules()):
        if fuse:
            swapped += sum(_fuse_siblings(parent, names) for names in FUSED_SIBLINGS)
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            packed = _packed_or_none(child)
            if packed is None:
                return swapped  # oneDNN disagrees here: leave the rest as they are
            setattr(parent, name, packed)
            swapped += 1
    return swapped


def _fuse_siblings(parent: torch.nn.Module, names: tuple[str, ...]) -> int:
    """Replace ``parent``'s linear children ``names`` by parts of one product; how many."""
    linears = [getattr(parent, name, None) for name in names]
    if not all(type(m) is torch.nn.Linear for m in linears):
        return 0
    group: list[torch.nn.Linear] = linears  # type: ignore[assignment]
    head = group[0]
    alike = all(m.in_features == head.in_features and m.weight.dtype == head.weight.dtype for m in group)
    if not alike or len({m.bias is None for m in group}) > 1:
        return 0  # left to PackedLinear one by one
    try:
        product = FusedProduct(group)
        parts = [FusedPart(product, i, linear) for i, linear in enumerate(group)]
        x = _probe(group[0])
        if not all(_agrees(part(x), linear, x) for part, linear in zip(parts, group, strict=True)):
            log.warning("oneDNN's fused product disagrees with torch's on %s: not fusing", "/".join(names))
            return 0
    except RuntimeError as exc:  # an op missing from this build or refusing this shape
        log.warning("cannot fuse %s for oneDNN (%s): packing them one by one", "/".join(names), exc)
        return 0
    for name, part in zip(names, parts, strict=True):
        setattr(parent, name, part)
    return len(parts)


def _packed_or_none(linear: torch.nn.Linear) -> PackedLinear | None:
    try:
        packed = PackedLinear(linear)
        x = _probe(linear)
        if _agrees(packed(x), linear, x):
            return packed
        log.warning("oneDNN's linear disagrees with torch's on a %s layer: not prepacking", tuple(linear.weight.shape))
    except RuntimeError as exc:  # an op missing from this build or refusing this shape
        log.warning("cannot prepack linear layers for oneDNN (%s): running them unpacked", exc)
    return None


def _probe(linear: torch.nn.Linear) -> torch.Tensor:
    # Its own generator: loading a model must not move torch's global random state.
    generator = torch.Generator().manual_seed(0)
    return torch.randn((3, linear.in_features), dtype=linear.weight.dtype, generator=generator)


def _agrees(got: torch.Tensor, linear: torch.nn.Linear, x: torch.Tensor) -> bool:
    expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
    # Same products summed in another order: a few units of the dtype's last place apart.
    tol = max(1e-4, 4 * torch.finfo(linear.weight.dtype).eps)
    return torch.allclose(got, expected, rtol=tol, atol=tol * float(expected.abs().max()))
