"""An engine core on vLLM: vLLM schedules, runs the model and samples; tokenrelay does the rest.

Theory of operation.  `VllmCore` satisfies the same `Core` interface as the builtin core
(engine.py): the runner, the sink, leases, cancel checks, takeover and the output processor
(output.py: detokenizing, stop strings, finish reasons, seq, usage, resume) are shared; only
the passes differ.  It drives vLLM's in-process engine (`LLMEngine`, the v1 engine behind
`LLM.generate`) one `step()` at a time from the engine thread:

- Each choice of a request is one vLLM request with ``n=1`` (id ``<request id>#<index>``):
  choices are rows to the output processor, resumed choices have tails of their own, and
  vLLM's prefix cache shares their prompt's KV anyway.  Prompts go in as token ids, rendered
  by tokenrelay (prompt.py), so both engines see the very same ids.
- vLLM never detokenizes (``detokenize=False``) and knows no stop strings: it returns token
  ids and logprobs (``output_kind=DELTA``), the output processor decides where a choice ends
  and `finish()` aborts it in vLLM when vLLM did not end it itself.  vLLM does stop at the
  same stop tokens (EOS unless ``ignore_eos``, plus ``stop_token_ids``, passed as
  ``stop_token_ids`` with vLLM's own EOS check off) and at ``max_tokens``, so it computes no
  token past the end.
- Logprobs: vLLM reports the sampled token's and the top ``top_logprobs`` alternatives of the
  processed distribution (``logprobs_mode="processed_logprobs"``), as the builtin sampler does.
- Resume: a choice's prompt is the request's prompt plus what the stream already holds, and
  its ``max_tokens`` what is left.  Greedy continues exactly; a seeded choice gets a seed
  derived from (seed, index, published tokens), deterministic but not the draws an unbroken
  run would have made (vLLM seeds one generator per request; README: Engines).

vLLM runs in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0`` unless set): all torch work
stays on the engine thread, and a killed worker leaves no engine process behind.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from schemas.config import GenerationConfig
from workers.engine.model_runner import LoadedModel
from workers.engine.output import CoreStep, Finished, Resume, Sampled
from workers.engine.scheduler import Limits
from workers.engine.token_bytes import build_token_bytes

__all__ = ["VllmCore", "load_vllm"]

SEP = "#"  # vLLM request id = tokenrelay request id + SEP + choice index


@dataclass
class _Request:
    request_id: str
    choices: dict[int, str] = field(default_factory=dict)  # unfinished choice index -> vLLM request id
    top_logprobs: int = 0
    started: bool = False  # a token came out


class _Rows:
    """The `Batch` view of vLLM's running sequences (vLLM owns the KV cache itself)."""

    def __init__(self, live: dict[str, tuple[str, int]], kv_bytes: int) -> None:
        self._live = live
        self._kv_bytes = kv_bytes

    @property
    def rows(self) -> list[str]:
        return list(self._live)

    @property
    def nbytes(self) -> int:
        return self._kv_bytes


def load_vllm(name: str, path: str, limits: Limits, engine_args: Mapping[str, Any] | None = None) -> VllmCore:
    """Start vLLM on the model folder ``path`` (on the calling thread: the engine thread)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not _has_gpu():
        # vLLM's CPU backend otherwise reserves 92 % of the memory for itself (or refuses to
        # start when that much is not free); 1 GiB holds ~23,000 tokens of SmolLM2 in fp32.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import EngineArgs
    from vllm.v1.engine.llm_engine import LLMEngine

    args: dict[str, Any] = {
        "model": path,
        "tokenizer": path,
        "served_model_name": name,
        "max_num_seqs": limits.max_batch_rows,
        "max_num_batched_tokens": max(limits.max_batch_tokens, 256),
        "logprobs_mode": "processed_logprobs",
        "max_logprobs": 20,
        "disable_log_stats": True,
        "seed": 0,
    }
    if not _has_gpu():
        args["dtype"] = "float32"  # as the builtin engine on CPU; vLLM would pick bf16
    args.update(engine_args or {})
    llm = LLMEngine.from_engine_args(EngineArgs(**args))
    return VllmCore(llm, _text_side(name, path, llm), limits, _kv_cache_bytes(llm))


def default_threads() -> int | None:
    """Torch threads for vLLM on the CPU when the user sets none: one per core but one.

    vLLM's CPU setup (OpenMP threads bound to cores, one core left to its scheduler) does not
    take effect in process (measured): the model would run on torch's default, a thread
    per core, whose barriers stall whenever the worker's own threads (scheduler, output
    processor, Redis) want a core.  Benchmark 14 on 2 cores: `--threads 1` gave 0.76-0.98 of
    vLLM's offline generate on one stream, the default 2 threads 0.12.  None on a GPU."""
    if _has_gpu():
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def _kv_cache_bytes(llm: Any) -> int:
    """vLLM allocates its KV cache up front: its size (not what is in use), 0 if unknown."""
    try:
        cfg = llm.vllm_config
        model, parallel = cfg.model_config, cfg.parallel_config
        tokens = cfg.cache_config.kv_cache_size_tokens
        per_token = 2 * model.get_num_layers(parallel) * model.get_num_kv_heads(parallel) * model.get_head_size()
        return int(tokens * per_token * model.dtype.itemsize)
    except Exception:  # another vLLM version, or the cache lives in vLLM's engine process
        return 0


def _has_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _text_side(name: str, path: str, llm: Any) -> LoadedModel:
    """What the output processor and prompt rendering need: tokenizer, token bytes, EOS ids and
    the context length vLLM serves; no weights (vLLM holds those)."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    from workers.engine.model_runner import eos_ids

    tokenizer = AutoTokenizer.from_pretrained(path)
    try:
        generation_config: Any = GenerationConfig.from_pretrained(path)
    except OSError:  # the folder has no generation_config.json
        generation_config = None
    model = SimpleNamespace(generation_config=generation_config, config=AutoConfig.from_pretrained(path))
    return LoadedModel(
        name=name,
        model=None,
        tokenizer=tokenizer,
        token_bytes=build_token_bytes(tokenizer),
        device=torch.device("cuda" if _has_gpu() else "cpu"),
        eos_token_ids=eos_ids(model, tokenizer),
        max_context=int(llm.model_config.max_model_len),
    )


class VllmCore:
    def __init__(self, llm: Any, loaded: LoadedModel, limits: Limits, kv_cache_bytes: int = 0) -> None:
        self.llm = llm
        self.loaded = loaded
        self.limits = limits
        self._requests: dict[str, _Request] = {}
        self._live: dict[str, tuple[str, int]] = {}  # vLLM request id -> (request id, choice index)
        self._batch = _Rows(self._live, kv_cache_bytes)

    # -- what Engine reads ---------------------------------------------------------------

    @property
    def batch(self) -> _Rows:
        return self._batch

    @property
    def waiting(self) -> list[str]:
        return [rid for rid, r in self._requests.items() if not r.started]

    @property
    def running(self) -> dict[str, _Request]:
        return {rid: r for rid, r in self._requests.items() if r.started}

    # -- requests -------------------------------------------------------------------------

    def add(self, request_id: str, prompt_ids: list[int], config: GenerationConfig, resume: Resume | None) -> None:
        published = resume.tokens if resume is not None else {}
        done = resume.finished if resume is not None else {}
        req = _Request(request_id, top_logprobs=config.top_logprobs)
        self._requests[request_id] = req
        try:
            for index in range(config.n):
                if index in done:
                    continue
                tail = list(published.get(index, []))
                vid = f"{request_id}{SEP}{index}"
                params = self._params(config, index, tail, len(prompt_ids))
                self.llm.add_request(vid, self._engine_input(prompt_ids + tail), params)
                req.choices[index] = vid
                self._live[vid] = (request_id, index)
        except Exception:
            self.remove(request_id)  # none of its choices stays in vLLM
            raise

    def remove(self, request_id: str) -> bool:
        req = self._requests.pop(request_id, None)
        if req is None:
            return False
        self._abort(req.choices.values())
        return True

    def abandon_pass(self) -> set[str]:
        """A failed step leaves vLLM's state unknown: end every request in it."""
        victims = set(self._requests)
        for rid in victims:
            self.remove(rid)
        return victims

    # -- passes ---------------------------------------------------------------------------

    def step(self) -> CoreStep | None:
        if not self._live:
            return None
        started = time.time()
        outputs = self.llm.step()
        step = CoreStep([], time.time(), prefill_started=started, prefill_s=time.time() - started)
        for out in outputs:
            owner = self._live.get(_external(out.request_id))
            if owner is None:  # aborted since vLLM scheduled it
                continue
            rid, index = owner
            req = self._requests[rid]
            completion = out.outputs[0]
            if not req.started and completion.token_ids:
                req.started = True
                step.admitted.append(rid)
            elif completion.token_ids and rid not in step.decoded:
                step.decoded.append(rid)
            for i, token in enumerate(completion.token_ids):
                step.tokens.append((rid, index, _sampled(token, completion.logprobs, i, req.top_logprobs)))
            if out.finished:
                self._live.pop(req.choices.get(index, ""), None)
        step.decoded = [rid for rid in step.decoded if rid not in step.admitted]
        return step

    def finish(self, finished: Iterable[Finished]) -> None:
        ended: list[str] = []
        for rid, index in finished:
            req = self._requests.get(rid)
            if req is None:
                continue
            vid = req.choices.pop(index, None)
            if vid is not None and vid in self._live:
                ended.append(vid)  # a stop string, or the context: vLLM would go on
            if not req.choices:
                del self._requests[rid]
        self._abort(ended)

    def _abort(self, vids: Iterable[str]) -> None:
        live = [v for v in vids if self._live.pop(v, None) is not None]
        if live:
            self.llm.abort_request(live)

    def _engine_input(self, token_ids: list[int]) -> Any:
        """Token ids as vLLM's engine takes them: rendered by its renderer where it has one
        (vLLM 0.32 deprecates raw prompts), else the raw prompt."""
        from vllm.inputs import TokensPrompt

        prompt = TokensPrompt(prompt_token_ids=token_ids)
        render = getattr(getattr(self.llm, "renderer", None), "render_cmpl", None)
        return render([prompt])[0] if render is not None else prompt

    def _params(self, config: GenerationConfig, index: int, tail: list[int], prompt_len: int) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        from workers.engine.sampler import draw_seed

        stop_ids = set(config.stop_token_ids)
        if not config.ignore_eos:
            stop_ids |= self.loaded.eos_token_ids
        room = self.loaded.max_context - prompt_len - len(tail)
        seed = None if config.seed is None else draw_seed(config.seed, index, len(tail)) % (2**31)
        return SamplingParams(
            n=1,
            max_tokens=max(1, min(config.max_tokens - len(tail), room)),
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            seed=seed,
            stop_token_ids=sorted(stop_ids),
            ignore_eos=True,  # EOS is among stop_token_ids unless the request ignores it
            logprobs=config.top_logprobs if config.logprobs else None,
            detokenize=False,
            skip_special_tokens=config.skip_special_tokens,
            output_kind=RequestOutputKind.DELTA,
        )


def _external(vllm_id: str) -> str:
    """vLLM may append a random suffix to a request id; ours end in SEP + the choice index."""
    head, sep, tail = vllm_id.rpartition(SEP)
    return f"{head}{sep}{tail.split('-', 1)[0]}" if sep else vllm_id


def _sampled(token: int, logprobs: Any, i: int, top_n: int) -> Sampled:
    if not logprobs:
        return Sampled(token, None, None)
    entries = logprobs[i]
    # vLLM lists the sampled token beside the top ``top_n`` alternatives (ranks 1..top_n);
    # like the builtin sampler, report the alternatives, the sampled one only if among them.
    # Ruled-out alternatives (-inf: top-k/top-p) could not have been drawn: not listed.
    top = sorted(
        (lp.rank, t, float(lp.logprob)) for t, lp in entries.items() if lp.rank is not None and lp.rank <= top_n
    )
    return Sampled(token, float(entries[token].logprob), [(t, v) for _r, t, v in top if v != float("-inf")])
