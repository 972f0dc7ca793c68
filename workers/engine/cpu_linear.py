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
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger(__name__)

# oneDNN's blocked kernels for these; bf16 ones are fast only with AVX512-BF16 or AMX, and a
# bf16 model is only loaded where the user asks for it (--dtype bfloat16).
_DTYPES = (torch.float32, torch.bfloat16)


class PackedLinear(torch.nn.Module):
    """``nn.Linear``'s forward over a oneDNN-reordered weight."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().contiguous()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


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
def prepack_linears(model: Any) -> int:
    """Swap every ``nn.Linear`` of ``model`` for a `PackedLinear` that computes the same (checked
    on a random input per layer); the number swapped.  0 where it does not apply."""
    if not available(model):
        return 0
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not torch.nn.Linear:
                continue
            packed = _packed_or_none(child)
            if packed is None:
                return swapped  # oneDNN disagrees here: leave the rest as they are
            setattr(parent, name, packed)
            swapped += 1
    return swapped


def _packed_or_none(linear: torch.nn.Linear) -> PackedLinear | None:
    try:
        packed = PackedLinear(linear)
        # Its own generator: loading a model must not move torch's global random state.
        x = torch.randn((3, linear.in_features), dtype=linear.weight.dtype, generator=torch.Generator().manual_seed(0))
        expected = torch.nn.functional.linear(x, linear.weight, linear.bias)
        # Same products summed in another order: a few units of the dtype's last place apart.
        tol = max(1e-4, 4 * torch.finfo(linear.weight.dtype).eps)
        if torch.allclose(packed(x), expected, rtol=tol, atol=tol * float(expected.abs().max())):
            return packed
        log.warning("oneDNN's linear disagrees with torch's on a %s layer: not prepacking", tuple(linear.weight.shape))
    except RuntimeError as exc:  # an op missing from this build or refusing this shape
        log.warning("cannot prepack linear layers for oneDNN (%s): running them unpacked", exc)
    return None
