"""Prepacked (oneDNN) linear layers compute what ``nn.Linear`` computes, on the tiny model and
on single layers; the setting turns them off; a layer oneDNN disagrees on stays unpacked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.engine import cpu_linear
from workers.engine.cpu_linear import FusedPart, PackedLinear, prepack_linears
from workers.engine.model_runner import cpu_has_bf16, load_model

pytestmark = pytest.mark.skipif(
    not cpu_linear.available(torch.nn.Linear(2, 2)), reason="oneDNN linear ops missing from this torch"
)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 8), (5, 8), (2, 7, 8)])
def test_packed_linear_equals_linear(bias: bool, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 24, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        expected = linear(x)
        got = PackedLinear(linear)(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_prepacked_model_gives_the_same_logits(tiny_model_dir: Path) -> None:
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    packed = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    linears = sum(type(m) is torch.nn.Linear for m in packed.modules())
    assert prepack_linears(packed) == linears > 0
    assert not any(type(m) is torch.nn.Linear for m in packed.modules())
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(packed(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)
        greedy = packed.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(greedy, plain.generate(ids, max_new_tokens=12, do_sample=False))


def test_load_model_prepacks_unless_turned_off(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_CPU_PREPACK", "1")
    assert any(isinstance(m, PackedLinear) for m in load_model("tiny", str(tiny_model_dir)).model.modules())
    monkeypatch.setenv("TOKENRELAY_CPU_PREPACK", "0")
    assert not any(isinstance(m, PackedLinear) for m in load_model("tiny", str(tiny_model_dir)).model.modules())


def test_a_layer_onednn_disagrees_on_stays_unpacked(monkeypatch: pytest.MonkeyPatch) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    real = PackedLinear.forward
    monkeypatch.setattr(PackedLinear, "forward", lambda self, x: real(self, x) + 1.0)  # a wrong kernel
    assert prepack_linears(model) == 0
    assert all(type(m) is torch.nn.Linear for m in model)


def test_half_precision_models_are_left_alone() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 8).to(torch.float16))
    assert prepack_linears(model) == 0


def test_a_bfloat16_model_is_prepacked_and_decodes_like_the_plain_one(tiny_model_dir: Path) -> None:
    """``--dtype bfloat16``: bf16 weights, oneDNN's bf16 kernels where the CPU has bf16 units,
    logits within bf16's precision of the plain bf16 model's."""
    loaded = load_model("tiny", str(tiny_model_dir), "bfloat16")
    assert next(loaded.model.parameters()).dtype is torch.bfloat16
    packed = sum(isinstance(m, PackedLinear) for m in loaded.model.modules())
    if cpu_has_bf16():
        assert packed > 0
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.inference_mode():
        got, expected = loaded.model(ids).logits.float(), plain(ids).logits.float()
    scale = float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=0.05, atol=0.05 * scale)


def test_siblings_become_one_product_and_give_the_same_logits(tiny_model_dir: Path) -> None:
    """q/k/v and gate/up of every layer are parts of one fused product; the model's logits
    and greedy tokens are those of the unfused prepacked model."""
    fused = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    apart = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    linears = sum(type(m) is torch.nn.Linear for m in fused.modules())
    assert prepack_linears(fused) == prepack_linears(apart, fuse=False) == linears
    layers = fused.config.num_hidden_layers
    assert sum(isinstance(m, FusedPart) for m in fused.modules()) == 5 * layers
    assert not any(isinstance(m, FusedPart) for m in apart.modules())
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]])
    with torch.inference_mode():
        torch.testing.assert_close(fused(ids).logits, apart(ids).logits, rtol=1e-5, atol=1e-5)
        greedy = fused.generate(ids, max_new_tokens=12, do_sample=False)
        assert torch.equal(greedy, apart.generate(ids, max_new_tokens=12, do_sample=False))


def test_a_fused_part_called_out_of_turn_still_computes_its_own_slice() -> None:
    """Parts called with different inputs, twice with one input, or in another order: each
    call returns that input's product for its part (no stale slice is ever handed out)."""
    torch.manual_seed(0)
    parent = torch.nn.Module()
    parent.q_proj, parent.k_proj, parent.v_proj = (torch.nn.Linear(8, n, bias=True) for n in (8, 4, 4))
    plain = {name: getattr(parent, name) for name in ("q_proj", "k_proj", "v_proj")}
    assert prepack_linears(parent) == 3
    a, b = torch.randn(2, 8), torch.randn(3, 8)
    calls = [("k_proj", a), ("q_proj", b), ("q_proj", b), ("v_proj", a), ("v_proj", b), ("k_proj", b), ("q_proj", a)]
    with torch.inference_mode():
        for name, x in calls:
            torch.testing.assert_close(getattr(parent, name)(x), plain[name](x), rtol=1e-5, atol=1e-5)


def test_siblings_of_mixed_bias_are_packed_one_by_one() -> None:
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = torch.nn.Linear(8, 8, bias=True), torch.nn.Linear(8, 8, bias=False)
    assert prepack_linears(parent) == 2
    assert isinstance(parent.gate_proj, PackedLinear) and isinstance(parent.up_proj, PackedLinear)


def test_siblings_a_wrong_fused_kernel_disagrees_on_are_packed_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    parent = torch.nn.Module()
    parent.gate_proj, parent.up_proj = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    real = cpu_linear.FusedProduct.take
    monkeypatch.setattr(cpu_linear.FusedProduct, "take", lambda self, i, x: real(self, i, x) + 1.0)
    assert prepack_linears(parent) == 2
    assert isinstance(parent.gate_proj, PackedLinear) and isinstance(parent.up_proj, PackedLinear)
