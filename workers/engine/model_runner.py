"""The model, loaded once per worker process, and its passes: prefill, decode, and both at once.

Device and dtype are chosen automatically: CUDA with bf16 (fp16 where bf16 is not
supported) when a GPU is present, else CPU with fp32 (linear layers prepacked for oneDNN:
cpu_linear.py).  ``--dtype`` / ``TOKENRELAY_DTYPE`` overrides the dtype: ``bfloat16`` on a CPU
with bf16 units (AVX512-BF16, AMX) makes decode steps ~1.4x faster, its tokens no longer
those of an fp32 ``generate``.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicCache
from transformers.utils import logging as hf_logging

from schemas.settings import cpu_prepack, lean_forward
from schemas.settings import device as forced_device
from workers.engine import llama_forward
from workers.engine.cpu_linear import prepack_linears
from workers.engine.kv_cache import BatchCache
from workers.engine.packed import Prompts, packable, packed_forward
from workers.engine.token_bytes import build_token_bytes

log = logging.getLogger(__name__)


def pick_device(dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """The device (TOKENRELAY_DEVICE, else CUDA when present, else CPU) and the dtype: ``dtype``
    by name (settings.DTYPES), or for "auto" bf16 on CUDA (fp16 without bf16), fp32 elsewhere."""
    forced = forced_device()
    device = torch.device(forced) if forced else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dtype != "auto":
        picked: torch.dtype = getattr(torch, dtype)
        if device.type == "cpu" and picked is torch.bfloat16 and not cpu_has_bf16():
            log.warning("--dtype bfloat16 on a CPU without bf16 units: emulated, likely slower than float32")
        return device, picked
    if device.type == "cuda":
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return device, torch.float32


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bf16 products natively (AVX512-BF16 or AMX tiles)."""
    cpu = torch.cpu
    checks = (getattr(cpu, "_is_avx512_bf16_supported", None), getattr(cpu, "_is_amx_tile_supported", None))
    return any(check is not None and bool(check()) for check in checks)


@dataclass
class LoadedModel:
    name: str
    model: Any  # a transformers PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    token_bytes: list[bytes]
    device: torch.device
    eos_token_ids: frozenset[int]
    max_context: int


def load_model(name: str, path: str, dtype: str = "auto") -> LoadedModel:
    """``dtype``: a name of settings.DTYPES ("auto": see `pick_device`)."""
    hf_logging.disable_progress_bar()  # one log line says the model is ready; no bars in worker logs
    device, torch_dtype = pick_device(dtype)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model: Any = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model = model.to(device).eval()
    if cpu_prepack():
        prepack_linears(model)  # CPU only: skinny decode products run ~1.5x faster (cpu_linear.py)
    return LoadedModel(
        name=name,
        model=model,
        tokenizer=tokenizer,
        token_bytes=build_token_bytes(tokenizer),
        device=device,
        eos_token_ids=eos_ids(model, tokenizer),
        max_context=int(getattr(model.config, "max_position_embeddings", 2048) or 2048),
    )


def eos_ids(model: Any, tokenizer: PreTrainedTokenizerBase) -> frozenset[int]:
    """The ids that end a choice unless it ignores EOS: from the generation config, the model
    config and the tokenizer (any of them may list one or several; the vLLM core passes configs
    read without weights)."""
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return frozenset(ids)


class ModelRunner:
    def __init__(self, loaded: LoadedModel, warmup: bool = True) -> None:
        self.model = loaded.model
        self.device = loaded.device
        self.vocab_size = len(loaded.tokenizer)
        # transformers renamed `past_key_values` to `cache` (5.2x warns, 5.40 removes the old
        # name); older releases only know the old one.
        params = inspect.signature(self.model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.packs = packable(self.model)  # decode rows and a prefill chunk share a pass
        self.lean = self.packs and lean_forward() and llama_forward.supports(self.model)
        if warmup:
            self.warmup()

    def warmup(self) -> None:
        """The first forward passes pay one-off costs (kernel selection, allocator growth,
        lazy initialisation: seconds on CPU); pay them at start-up, not in a user's TTFT."""
        _, cache = self.prefill([[0, 1, 2, 3], [0, 1]])
        for _ in range(2):
            self.decode(cache, [0, 0])
        prompts = Prompts([[0, 1, 2, 3]], self.device)
        while prompts.remaining:
            self.run(cache, [0, 0], prompts, 2)

    @torch.inference_mode()
    def run(
        self, cache: BatchCache | None, tokens: list[int], prompts: Prompts | None, columns: int
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One engine step's pass: a token for every row of ``cache`` (decode) and the next
        ``columns`` columns of ``prompts`` (prefill), packed into one pass (packed.py).
        Returns the decode rows' logits and, once the prompts are complete, theirs."""
        if self.packs:
            return packed_forward(self.model, self._cache_arg, cache, tokens, prompts, columns, self.lean)
        # A model that cannot be packed: a decode pass, and the prompts whole in a pass of their own.
        decoded = self.decode(cache, tokens) if cache is not None else None
        if prompts is None:
            return decoded, None
        assert prompts.done == 0, "unpackable models prefill whole prompts"
        logits, whole = self._prefill(prompts)
        prompts.layers, prompts.done = whole.layers, prompts.width
        return decoded, logits

    def prefill(self, prompts: list[list[int]]) -> tuple[torch.Tensor, BatchCache]:
        """One pass over left-padded prompts: next-token logits (k, vocab) and their cache."""
        return self._prefill(Prompts(prompts, self.device))

    @torch.inference_mode()
    def _prefill(self, prompts: Prompts) -> tuple[torch.Tensor, BatchCache]:
        cache = DynamicCache()
        out = self.model(
            input_ids=prompts.ids,
            attention_mask=prompts.mask,
            position_ids=prompts.positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_arg: cache},
        )
        return out.logits[:, -1, :], BatchCache(cache, prompts.mask, prompts.mask.sum(dim=1))

    @torch.inference_mode()
    def decode(self, cache: BatchCache, tokens: list[int]) -> torch.Tensor:
        """One pass over one new token per row: next-token logits (rows, vocab)."""
        # The cache's buffer rows are in their own order (kv_cache.py): tokens in, logits out.
        ids = torch.tensor(cache.physical(tokens), dtype=torch.long, device=self.device).unsqueeze(1)
        mask = torch.cat([cache.mask, cache.mask.new_ones((cache.rows, 1))], dim=1)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=cache.positions.unsqueeze(1),
            use_cache=True,
            cache_position=torch.tensor([cache.length], device=self.device),
            **{self._cache_arg: cache.as_hf_cache()},
        )
        cache.append_step()
        return cache.logical(out.logits[:, -1, :])
