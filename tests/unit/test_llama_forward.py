"""The engine's own Llama forward (llama_forward.py) computes what transformers' forward does:
the same logits and the same keys and values in the caches, for decode rows and a prompt chunk
packed into one pass; on SmolLM2 (prepacked, fused products) and on small random Llama, Qwen2
and Mistral models.  Models it does not know, or with hooks, are refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

from workers.engine import llama_forward
from workers.engine.kv_cache import BatchCache
from workers.engine.model_runner import ModelRunner, load_model
from workers.engine.packed import Prompts, packed_forward


def _pass(model: Any, lean: bool) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Two rows decoding (prefilled in a first packed pass) while a prompt's first chunk joins."""
    first = Prompts([[5, 9, 14, 3, 7, 21], [8, 2, 11]], torch.device("cpu"))
    arg = "past_key_values"
    _none, logits = packed_forward(model, arg, None, [], first, 16, lean)
    assert logits is not None
    cache: BatchCache = first.cache()
    joining = Prompts([[4, 4, 6, 30, 2, 9, 17, 1], [12, 3]], torch.device("cpu"))
    decoded, _ = packed_forward(model, arg, cache, [1, 2], joining, 4, lean)
    assert decoded is not None
    kv = [layer.k_view.clone() for layer in cache.layers] + [layer.k_view.clone() for layer in joining.layers]
    return logits, decoded, kv


def _same(model: Any, exact: bool) -> None:
    with torch.inference_mode():
        ref = _pass(model, lean=False)
        got = _pass(model, lean=True)
    for a, b in zip([ref[0], ref[1], *ref[2]], [got[0], got[1], *got[2]], strict=True):
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def _tiny(config: Any) -> Any:
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


SMALL = {
    "vocab_size": 64,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.mark.parametrize(
    "config",
    [LlamaConfig(**SMALL), Qwen2Config(**SMALL), MistralConfig(**SMALL, sliding_window=None)],
    ids=["llama", "qwen2", "mistral"],
)
def test_the_same_numbers_as_transformers_forward(config: Any) -> None:
    model = _tiny(config)
    assert llama_forward.supports(model)
    _same(model, exact=False)


def test_smollm2_prepacked_the_same_numbers_exactly(smollm2_dir: Path) -> None:
    loaded = load_model("smol", str(smollm2_dir))
    assert llama_forward.supports(loaded.model)
    _same(loaded.model, exact=True)


def test_unknown_models_and_hooked_ones_run_transformers_forward() -> None:
    gpt2 = _tiny(GPT2Config(vocab_size=64, n_embd=32, n_layer=1, n_head=2, n_positions=64))
    assert not llama_forward.supports(gpt2)
    llama = _tiny(LlamaConfig(**SMALL))
    handle = llama.model.layers[0].mlp.register_forward_hook(lambda *_a: None)
    assert not llama_forward.supports(llama)
    handle.remove()
    assert llama_forward.supports(llama)


def test_the_runner_uses_it_unless_turned_off(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_model("tiny", str(tiny_model_dir))
    assert ModelRunner(loaded, warmup=False).lean
    monkeypatch.setenv("TOKENRELAY_LEAN_FORWARD", "0")
    assert not ModelRunner(loaded, warmup=False).lean
