"""Scenario 4's traffic replayed on an engine in process (no Redis, no Celery, no HTTP).

``python -m benchmarks.engine_load [--engines builtin,vllm] [--loads 1.0] [--repeat 1] [--quick]``
``[--chunk 32|auto] [--slowdown 1.7] [--temperature 0] [--top-p 1] [--noise 10]``

Each engine runs in a fresh interpreter of its own (vLLM sets threads up at start), one after
the other, on the same arrivals: scenario 4's trace (64 story prompts, greedy, ``ignore_eos``,
``max_tokens`` 16..128, Poisson over ~45 s: ~134 offered tokens/s), its gaps divided by the
load factor.  It prints, per engine and load: tokens/s (tokens over first arrival -> last
token), TTFT p50/p99 (arrival -> first token out of the core) and inter-token p50/p99 (gaps
between a request's tokens), the engine-side numbers behind scenario 12's load sweep without
the gateway's share; before and after, the machine's own spread on a fixed step
(benchmarks/machine_noise.py), the floor under any inter-token p99/p50.  A quick tool for
changing the engine (``--chunk``, ``--slowdown``, ``--prepack``, ``--dtype``; ``--temperature``
and ``--top-p`` sample instead of greedy, unseeded), not a scenario of the suite.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time

from benchmarks import machine_noise
from benchmarks.common import percentile
from benchmarks.prefill_stalls import token_times
from benchmarks.vllm_ref import Arrival, s4_trace
from cli.worker_cmd import prefill_chunk_arg
from schemas.config import GenerationConfig
from schemas.settings import DTYPES
from workers.engine.engine import Engine
from workers.engine.scheduler import Limits
from workers.model_store import ensure_smollm2

HEADS = ("tok/s", "ttft50", "ttft99", "itl50", "itl99", "p99/p50")


def replay(engine: Engine, trace: list[Arrival], temperature: float = 0.0, top_p: float = 1.0) -> dict[str, float]:
    """Add each request at its arrival time and step the engine until every one has ended."""
    times = token_times(engine, time.perf_counter)
    start = due = time.perf_counter()
    arrivals: dict[str, float] = {}
    pending, ended = list(trace), 0
    while pending or ended < len(trace):
        now = time.perf_counter()
        while pending and due + pending[0].gap_s <= now:
            a = pending.pop(0)
            due += a.gap_s
            rid = f"r{len(arrivals)}"
            config = GenerationConfig(max_tokens=a.max_tokens, temperature=temperature, top_p=top_p, ignore_eos=True)
            engine.add(rid, prompt=a.prompt, config=config)
            arrivals[rid] = due
        if not engine.has_work():
            time.sleep(max(0.0, min(0.01, due + pending[0].gap_s - now)) if pending else 0.0)
            continue
        ended += sum(1 for _rid, rec in engine.step() if rec.usage is not None)
    end = max(ts[-1] for ts in times.values())
    ttft = [times[rid][0] - at for rid, at in arrivals.items()]
    itl = [b - a for ts in times.values() for a, b in itertools.pairwise(ts)]
    return {
        "tok_s": sum(len(ts) for ts in times.values()) / (end - start),
        "ttft50": percentile(ttft, 50) * 1000,
        "ttft99": percentile(ttft, 99) * 1000,
        "itl50": percentile(itl, 50) * 1000,
        "itl99": percentile(itl, 99) * 1000,
    }


def scaled(trace: list[Arrival], load: float) -> list[Arrival]:
    return [Arrival(a.gap_s / load, a.prompt, a.max_tokens) for a in trace]


def child(args: argparse.Namespace) -> None:
    """One engine, every load: one JSON line per run on stdout."""
    limits = Limits(prefill_chunk=args.chunk, step_slowdown=args.slowdown)
    path = str(ensure_smollm2())
    if args.engine == "vllm":
        import torch

        from workers.engine.vllm_core import default_threads, load_vllm

        torch.set_num_threads(default_threads() or torch.get_num_threads())
        core = load_vllm("smollm2", path, limits)
        engine = Engine(core.loaded, limits, core=core)
    else:
        from workers.engine.model_runner import load_model

        engine = Engine(load_model("smollm2", path, args.dtype), limits)
    trace = s4_trace(args.quick)
    replay(engine, scaled(trace[:4], 1.0), args.temperature, args.top_p)  # warm-up: the first passes pay one-off costs
    for _ in range(args.repeat):
        for load in args.loads:
            run = replay(engine, scaled(trace, load), args.temperature, args.top_p)
            print(json.dumps({"engine": args.engine, "load": load, **run}), flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engines", default="builtin,vllm")
    p.add_argument("--engine", help=argparse.SUPPRESS)  # the child's
    p.add_argument("--loads", default="1.0", type=lambda s: [float(x) for x in s.split(",")])
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument(
        "--chunk",
        type=prefill_chunk_arg,
        default=Limits().prefill_chunk,
        help="the builtin engine's prefill chunk: N or auto",
    )
    p.add_argument(
        "--slowdown", type=float, default=Limits().step_slowdown, help="with --chunk auto: Limits.step_slowdown"
    )
    p.add_argument("--prepack", choices=("0", "1"), help="TOKENRELAY_CPU_PREPACK for the builtin engine")
    p.add_argument("--dtype", choices=DTYPES, default="auto", help="the builtin engine's dtype (worker --dtype)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy, as scenario 4 (default)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (with --temperature > 0)")
    p.add_argument("--quick", action="store_true", help="scenario 4's quick trace")
    p.add_argument(
        "--noise", type=float, default=10.0, help="seconds of the machine-noise probe before and after (0: none)"
    )
    args = p.parse_args(argv)
    if args.engine:
        child(args)
        return
    _noise(args.noise, "before")
    print(f"{'engine':>8} {'load':>5} " + " ".join(f"{h:>8}" for h in HEADS), flush=True)
    env = dict(os.environ, **({"TOKENRELAY_CPU_PREPACK": args.prepack} if args.prepack else {}))
    for name in args.engines.split(","):
        cmd = [sys.executable, "-m", "benchmarks.engine_load", "--engine", name, "--repeat", str(args.repeat)]
        cmd += ["--loads", ",".join(map(str, args.loads)), "--chunk", "auto" if args.chunk is None else str(args.chunk)]
        cmd += ["--slowdown", str(args.slowdown), "--dtype", args.dtype]
        cmd += ["--temperature", str(args.temperature), "--top-p", str(args.top_p)]
        cmd += ["--quick"] if args.quick else []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
            assert proc.stdout is not None
            for line in proc.stdout:
                if not line.startswith("{"):
                    continue
                r = json.loads(line)
                cells = [r["tok_s"], r["ttft50"], r["ttft99"], r["itl50"], r["itl99"], r["itl99"] / r["itl50"]]
                print(f"{name:>8} {r['load']:5.2f} " + " ".join(f"{c:8.1f}" for c in cells), flush=True)
    _noise(args.noise, "after")


def _noise(seconds: float, when: str) -> None:
    """The machine's own spread (benchmarks/machine_noise.py), measured with no engine running."""
    if seconds > 0:
        print(f"machine noise {when}: {machine_noise.measure(seconds).describe()}", flush=True)


if __name__ == "__main__":
    main()
