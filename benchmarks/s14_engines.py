"""Scenario 14: the two engine cores through the real pipeline, and vLLM's own figures beside them.

One worker at a time (never two on the 2 cores): a ``--engine builtin`` worker, then a
``--engine vllm`` worker; each runs the same four measurements through producer → Celery →
worker → Redis Streams → reader:

- one greedy stream (``ignore_eos``, 128 tokens; quick: 32): tokens/s from submit to the last
  record, median of a few runs;
- 16 streams submitted at once (scenario 3's ``pipeline``): aggregate tokens/s;
- TTFT p50 unloaded (scenario 2's prompt, an idle pause before each run);
- scenario 4's Poisson trace: aggregate tokens/s, TTFT p50/p99 at the reader.

Then vLLM's own references, in the same run, with the same engine arguments:

- offline ``LLM.generate`` (benchmarks/vllm_offline.py, a fresh interpreter, vLLM's default
  multiprocess engine core) on the very token ids the worker renders: one stream and 16
  together.  Goals: the vLLM engine keeps >= 0.95 of offline's one-stream tokens/s and >= 0.9
  of its 16-stream aggregate;
- vLLM's OpenAI server (benchmarks/vllm_ref.py): TTFT p50 unloaded and the Poisson trace's
  TTFT p50/p99, as ratios (informational: an HTTP server against a queue pipeline).

Between them, each engine once more with ``--threads 1`` (informational).  Why: vLLM's CPU
thread setup lives in its multiprocess executor (1 OpenMP thread bound to a core, the other core
left to its scheduler process); in process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``, the worker's
default) the model ran on torch's default of 2 unbound OpenMP threads, whose barriers stall
whenever anything else wants a core (offline ``LLM.generate`` in process shows the same), so
the vLLM engine now defaults to one thread per core but one on CPU: on 2 cores the default and
``--threads 1`` are the same setting.

Last, the side-by-side rows: vLLM engine (pipeline column) against builtin engine (reference
column), which tell a user which engine to run on this machine.

vLLM runs with ``enforce_eager=true`` on every side (worker, offline, server): without it each
start compiles the model with inductor (about a minute on 2 cores, three starts per run), and
the fair comparison is the same arguments everywhere.  ``TOKENRELAY_BENCH14_COMPILED=1`` runs
the compiled default instead (every side again), for a look at what compilation buys.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Context, Row, median, ms, percentile
from benchmarks.prompts import story_prompt, story_prompts
from benchmarks.s2_ttft import IDLE_S, PROMPT
from benchmarks.s3_batch import pipeline
from benchmarks.s4_poisson import arrivals, replay
from benchmarks.timing import run_one
from workers.launcher import Stack, start_stack

NAME = "14 engines"
GOAL_ONE = 0.95
GOAL_MANY = 0.9
STREAMS = 16
STARTUP_TIMEOUT_S = 900.0  # a compiled vLLM start on a busy machine


def vllm_args() -> dict[str, Any]:
    """The vLLM engine arguments of every vLLM side (worker, offline, server)."""
    if os.environ.get("TOKENRELAY_BENCH14_COMPILED", "") in ("1", "true", "yes"):
        return {}
    return {"enforce_eager": True}


@dataclass
class Figures:
    """What one side measured (None where that side does not measure it)."""

    label: str
    one_tps: float | None = None
    many_tps: float | None = None
    ttft_ms: float | None = None
    poisson_tps: float | None = None
    poisson_p50_ms: float | None = None
    poisson_p99_ms: float | None = None
    startup_s: float | None = None
    load: float = 0.0  # 1-minute load average when the side started
    notes: list[str] = field(default_factory=list)
    token_ids: list[list[int]] = field(default_factory=list, repr=False)  # the 16 streams' greedy tokens


def shape(quick: bool) -> tuple[int, int, int]:
    """Tokens per stream, one-stream repeats, TTFT runs."""
    return (32, 1, 3) if quick else (128, 3, 10)


def _load() -> float:
    return os.getloadavg()[0]


# -- the pipeline, one engine at a time --------------------------------------------------------


def _start(url: str, extra_args: list[str], env: dict[str, str] | None) -> tuple[Stack, float]:
    started = time.perf_counter()
    stack = start_stack(url, extra_args=extra_args, env=env, ready_timeout_s=STARTUP_TIMEOUT_S)
    return stack, time.perf_counter() - started


def measure_engine(ctx: Context, label: str, extra_args: list[str], env: dict[str, str] | None = None) -> Figures:
    tokens, repeats, runs = shape(ctx.quick)
    fig = Figures(label, load=_load())
    stack, fig.startup_s = _start(ctx.url, extra_args, env)
    print(f"   {label}: worker ready in {fig.startup_s:.0f} s (load {fig.load:.2f})", flush=True)
    try:
        config = {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}
        prompt = story_prompt(0)
        run_one(stack.producer, stack.reader, prompt, **{**config, "max_tokens": 4})  # warm-up
        one = [run_one(stack.producer, stack.reader, prompt, **config) for _ in range(repeats)]
        fig.one_tps = median([t.tokens / t.elapsed_s for t in one])

        started, traces = asyncio.run(pipeline(stack.producer, stack.url, story_prompts(STREAMS), tokens))
        end = max(t.last for t in traces if t.last is not None)
        fig.many_tps = sum(t.tokens for t in traces) / (end - started)
        fig.token_ids = [t.token_ids for t in traces]

        ttft = []
        short = {"max_tokens": 2, "temperature": 0, "ignore_eos": True}
        run_one(stack.producer, stack.reader, PROMPT, **short)  # warm-up
        for _ in range(runs):
            time.sleep(IDLE_S)
            t = run_one(stack.producer, stack.reader, PROMPT, **short)
            if t.ttft_s is not None:
                ttft.append(t.ttft_s)
        fig.ttft_ms = ms(percentile(ttft, 50))

        gaps, lengths = arrivals(ctx.quick)
        started, traces = asyncio.run(replay(stack.producer, stack.url, gaps, lengths))
        end = max(t.last for t in traces if t.last is not None)
        fig.poisson_tps = sum(t.tokens for t in traces) / (end - started)
        reader_ttft = [t.ttft_s for t in traces if t.ttft_s is not None]
        fig.poisson_p50_ms = ms(percentile(reader_ttft, 50))
        fig.poisson_p99_ms = ms(percentile(reader_ttft, 99))
    finally:
        stack.stop()
    print(f"   {label}: {fig}", flush=True)
    return fig


# -- vLLM's own references ----------------------------------------------------------------------


def _model_dir() -> str:
    from workers.model_store import ensure_smollm2

    return str(ensure_smollm2())


def measure_offline(ctx: Context, args: dict[str, Any]) -> Figures:
    """vLLM's LLM.generate on the token ids the worker renders (tokenizer.encode of the prompt)."""
    from transformers import AutoTokenizer

    from benchmarks.vllm_offline import offline_jobs

    tokens, repeats, _runs = shape(ctx.quick)
    model_dir = _model_dir()
    tok = AutoTokenizer.from_pretrained(model_dir)
    one = [tok.encode(story_prompt(0))]
    many = [tok.encode(p) for p in story_prompts(STREAMS)]
    # The worker's vLLM settings that differ from vLLM's defaults and matter for speed.
    engine_args = {"max_num_batched_tokens": 2048, **args}
    fig = Figures("vLLM offline", load=_load())
    started = time.perf_counter()
    jobs = [
        {"prompts": one, "max_tokens": tokens, "repeats": repeats},
        {"prompts": many, "max_tokens": tokens, "repeats": 1},
    ]
    result = offline_jobs(model_dir, jobs, engine_args)
    one_s, many_s = result["jobs"][0]["seconds"], result["jobs"][1]["seconds"]
    fig.one_tps = median([tokens / s for s in one_s])
    fig.many_tps = STREAMS * tokens / many_s[0]
    fig.token_ids = result["jobs"][1]["token_ids"]
    fig.startup_s = float(result["startup_s"])
    print(f"   vLLM offline: {fig} ({time.perf_counter() - started:.0f} s in all)", flush=True)
    return fig


def measure_server(ctx: Context, args: dict[str, Any]) -> Figures | None:
    from benchmarks.vllm_ref import find_vllm, poisson_trace, s4_trace, ttft_ms, vllm_server

    python = find_vllm()
    if python is None:
        print("   vLLM server: no Python with vllm; skipped", flush=True)
        return None
    _tokens, _repeats, runs = shape(ctx.quick)
    extra = [f"--{k.replace('_', '-')}" for k, v in args.items() if v is True]
    extra += [f"--{k.replace('_', '-')}={v}" for k, v in args.items() if v is not True]
    fig = Figures("vLLM server", load=_load())
    started = time.perf_counter()
    with vllm_server(_model_dir(), python, extra_args=extra) as base:
        fig.startup_s = time.perf_counter() - started
        print(f"   vLLM server: up in {fig.startup_s:.0f} s (load {fig.load:.2f})", flush=True)
        fig.ttft_ms = percentile(ttft_ms(base, PROMPT, runs), 50)
        r = poisson_trace(base, s4_trace(ctx.quick))
        fig.poisson_tps, fig.poisson_p50_ms, fig.poisson_p99_ms = r["tok_s"], r["ttft_p50_ms"], r["ttft_p99_ms"]
    print(f"   vLLM server: {fig}", flush=True)
    return fig


# -- the scenario -------------------------------------------------------------------------------


def run(ctx: Context) -> list[Row]:
    ctx.stop_worker()  # this scenario's workers have the cores to themselves
    args = vllm_args()
    mode = "enforce_eager" if args.get("enforce_eager") else "compiled (inductor)"
    engine_args = [f"--engine-arg={k}={str(v).lower()}" for k, v in args.items()]
    tokens, repeats, runs = shape(ctx.quick)
    builtin = measure_engine(ctx, "builtin engine", ["--engine", "builtin"])
    builtin_one = measure_engine(ctx, "builtin engine --threads 1", ["--engine", "builtin", "--threads", "1"])
    vllm = measure_engine(ctx, "vLLM engine", ["--engine", "vllm", *engine_args])
    # The same worker on one torch thread, as vLLM's own engine core runs its model (see the
    # module docstring): what the in-process engine gains from vLLM's CPU thread setup.
    one_thread = measure_engine(ctx, "vLLM engine --threads 1", ["--engine", "vllm", "--threads", "1", *engine_args])
    offline = measure_offline(ctx, args)
    server = measure_server(ctx, args)
    same = vllm.token_ids == offline.token_ids
    sides = (builtin, builtin_one, vllm, one_thread, offline, server)
    loads = ", ".join(f"{f.label} {f.load:.2f}" for f in sides if f is not None)
    starts = ", ".join(f"{f.label} {f.startup_s:.0f} s" for f in sides if f and f.startup_s is not None)
    offline_label = "vLLM offline"
    rows = [
        Row(
            NAME,
            f"vLLM engine / offline LLM.generate: 1 stream tok/s ({tokens} tok, median of {repeats})",
            vllm.one_tps,
            offline.one_tps,
            "tok/s",
            f"ratio >= {GOAL_ONE}",
            _at_least(vllm.one_tps, offline.one_tps, GOAL_ONE),
            note=f"vLLM {mode} on every vLLM side; load average at each side's start: {loads}; start-up: {starts}",
            ref_label=offline_label,
        ),
        Row(
            NAME,
            f"vLLM engine / offline LLM.generate: {STREAMS} streams aggregate tok/s",
            vllm.many_tps,
            offline.many_tps,
            "tok/s",
            f"ratio >= {GOAL_MANY}",
            _at_least(vllm.many_tps, offline.many_tps, GOAL_MANY),
            note=f"{STREAMS} x {tokens} greedy tokens; the vLLM engine's tokens equal offline's: {same}",
            ref_label=offline_label,
        ),
        Row(
            NAME,
            "vLLM engine --threads 1 / offline: 1 stream tok/s",
            one_thread.one_tps,
            offline.one_tps,
            "tok/s",
            note="informational: vLLM's own engine core runs its model on 1 OpenMP thread bound to a core "
            "(the other core reserved for its scheduler); the vLLM engine's default on CPU is one thread "
            "per core but one (on 2 cores the same as --threads 1)",
            ref_label=offline_label,
        ),
        Row(
            NAME,
            f"vLLM engine --threads 1 / offline: {STREAMS} streams tok/s",
            one_thread.many_tps,
            offline.many_tps,
            "tok/s",
            ref_label=offline_label,
        ),
    ]
    if server is not None:
        rows += against_server(vllm, server, runs, "")
        rows += against_server(one_thread, server, runs, " --threads 1")
    rows += side_by_side(vllm, builtin, tokens, "")
    rows += side_by_side(one_thread, builtin_one, tokens, " --threads 1")
    gaps, lengths = arrivals(ctx.quick)
    rows[-3].note = f"{len(gaps)} requests over {sum(gaps):.1f} s, offered {sum(lengths) / sum(gaps):.0f} tok/s"
    return rows


def against_server(vllm: Figures, server: Figures, runs: int, flags: str) -> list[Row]:
    """The vLLM engine through the pipeline against vLLM's OpenAI server (informational)."""
    pairs = [
        (f"TTFT p50 unloaded ({runs} runs)", vllm.ttft_ms, server.ttft_ms, "ms"),
        ("Poisson tok/s", vllm.poisson_tps, server.poisson_tps, "tok/s"),
        ("Poisson TTFT p50", vllm.poisson_p50_ms, server.poisson_p50_ms, "ms"),
        ("Poisson TTFT p99", vllm.poisson_p99_ms, server.poisson_p99_ms, "ms"),
    ]
    return [
        Row(NAME, f"vLLM engine{flags} / vLLM server: {metric}", mine, theirs, unit, ref_label="vLLM server")
        for metric, mine, theirs, unit in pairs
    ]


def side_by_side(vllm: Figures, builtin: Figures, tokens: int, flags: str) -> list[Row]:
    """The vLLM engine (pipeline column) against the builtin engine (reference column)."""
    label = f"vLLM engine / builtin engine{flags}"
    pairs = [
        (f"1 stream tok/s ({tokens} tok)", vllm.one_tps, builtin.one_tps, "tok/s"),
        (f"{STREAMS} streams tok/s", vllm.many_tps, builtin.many_tps, "tok/s"),
        ("TTFT p50 unloaded", vllm.ttft_ms, builtin.ttft_ms, "ms"),
        ("Poisson tok/s", vllm.poisson_tps, builtin.poisson_tps, "tok/s"),
        ("Poisson TTFT p50", vllm.poisson_p50_ms, builtin.poisson_p50_ms, "ms"),
        ("Poisson TTFT p99", vllm.poisson_p99_ms, builtin.poisson_p99_ms, "ms"),
    ]
    return [
        Row(NAME, f"{label}: {metric}", mine, theirs, unit, ref_label=f"builtin engine{flags}")
        for metric, mine, theirs, unit in pairs
    ]


def _at_least(value: float | None, reference: float | None, goal: float) -> bool | None:
    if value is None or not reference:
        return None
    return value / reference >= goal
