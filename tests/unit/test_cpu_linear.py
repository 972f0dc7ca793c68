"""Prepacked (oneDNN) linear layers compute what ``nn.Linear`` computes, on the tiny model and
on single layers; the setting turns them off; a layer oneDNN disagrees on stays unpacked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from workers.engine import cpu_linear
from workers.engine.cpu_linear import PackedLinear, prepack_linears
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
