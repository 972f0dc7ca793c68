"""The in-process reference: the same converted SmolLM2, fp32, driven by ``model.generate``,
with the same linear layers as the worker's (prepacked for oneDNN unless
``TOKENRELAY_CPU_PREPACK=0``: workers/engine/cpu_linear.py).

Runs in the benchmark process, only while the worker is idle (2 cores: never both at once).
EOS never stops a reference generation (``eos_token_id=None``), as ``ignore_eos=True`` on
the pipeline side, so both produce exactly the requested number of tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig
from transformers.generation.streamers import BaseStreamer
from transformers.utils import logging as hf_logging

from schemas.settings import cpu_prepack
from workers.engine.cpu_linear import prepack_linears
from workers.model_store import ensure_smollm2


@dataclass
class TokenClock(BaseStreamer):
    """A streamer that only notes when each generated token arrives (no decoding cost)."""

    prompt_seen: bool = False
    times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands the prompt over first
            self.prompt_seen = True
            return
        now = time.perf_counter()
        ids = value.reshape(-1).tolist()
        self.times.extend([now] * len(ids))
        self.token_ids.extend(int(i) for i in ids)

    def end(self) -> None:
        pass


@dataclass
class RefRun:
    started: float
    token_times: list[float]
    token_ids: list[int]

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.started

    @property
    def elapsed_s(self) -> float:
        return self.token_times[-1] - self.started

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_times) / self.elapsed_s


class RefModel:
    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    @classmethod
    def load(cls) -> RefModel:
        hf_logging.set_verbosity_error()  # no progress bars or flag warnings in the table
        hf_logging.disable_progress_bar()
        path = ensure_smollm2()
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        if cpu_prepack():  # the worker's kernels: the ratios measure the pipeline, not oneDNN
            prepack_linears(model)
        # generate() fills an unset eos_token_id from the model's own generation config, so
        # "never stop on EOS" must be said there too.
        model.generation_config.eos_token_id = None
        return cls(model, tokenizer)

    def _config(self, new_tokens: int) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=None, pad_token_id=self.pad_id)

    def stream(self, prompt: str, new_tokens: int) -> RefRun:
        """One greedy streaming generation, token times from the streamer."""
        # The worker encodes plain prompts the same way (workers.engine.prompt.encode_prompt).
        ids = torch.tensor([self.tokenizer.encode(prompt)])
        clock = TokenClock()
        started = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(
                ids, attention_mask=torch.ones_like(ids), generation_config=self._config(new_tokens), streamer=clock
            )
        return RefRun(started, clock.times, clock.token_ids)

    def batch(self, prompts: Sequence[str], new_tokens: int) -> float:
        """Static batch: left-padded, one ``generate`` call; returns the seconds it took."""
        self.tokenizer.padding_side = "left"
        enc = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
        started = time.perf_counter()
        with torch.inference_mode():
            out = self.model.generate(**enc, generation_config=self._config(new_tokens))
        elapsed = time.perf_counter() - started
        assert out.shape[1] - enc["input_ids"].shape[1] == new_tokens
        return elapsed
