"""Inter-token latency of running streams while long prompts arrive (in-process: no Redis).

``python -m benchmarks.prefill_stalls [--chunks off,32,64] [--repeat 2] [--streams 16]``

``--streams`` requests decode (story prompts, greedy) while ``--arrivals`` requests with
100-300-token prompts arrive (Poisson, seeded: the same trace for every setting) and decode 16
tokens each.  For each prefill chunk setting (``off``: a chunk larger than any prompt, so a
prompt is prefilled in one go; ``default``: `Limits()` as it is, e.g. on an older checkout)
it prints the running streams' inter-token latency p50/p99 while the arrivals come, the same
in a quiet window before them (plain decode steps), the arrivals' TTFT and the tokens/s of the
window.  Settings alternate round by round, so a busy machine hurts them alike; on a machine
busy with other work, ``--cpu-clock`` times the run in its own CPU time (one thread).
"""

from __future__ import annotations

import argparse
import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from benchmarks.common import percentile
from benchmarks.prompts import story_prompt
from schemas.config import GenerationConfig
from workers.engine.engine import Engine
from workers.engine.model_runner import LoadedModel, load_model
from workers.engine.scheduler import Limits
from workers.model_store import ensure_smollm2

TEXT = (
    "The lighthouse stood at the end of a narrow spit of rock, and for forty years the same keeper had "
    "climbed its spiral stairs every evening to light the lamp. He knew every ship that passed, every storm "
    "that came in from the west, and every gull that nested on the gallery rail. "
)


Clock = Callable[[], float]


@dataclass(frozen=True)
class Arrival:
    at: float  # seconds after the first arrival window opens
    prompt: str
    tokens: int


def make_trace(loaded: LoadedModel, n: int, mean_gap_s: float, seed: int = 1234) -> list[Arrival]:
    rng = random.Random(seed)
    ids: list[int] = loaded.tokenizer.encode(TEXT * 12)
    at, out = 0.0, []
    for i in range(n):
        length = rng.randint(100, 300)
        start = rng.randint(0, len(ids) - length)
        out.append(Arrival(at, f"[{i}] " + str(loaded.tokenizer.decode(ids[start : start + length])), length))
        at += rng.expovariate(1 / mean_gap_s)
    return out


def token_times(engine: Engine, clock: Clock) -> dict[str, list[float]]:
    """When each request's tokens come out of the engine's core (filled as the engine steps)."""
    times: dict[str, list[float]] = defaultdict(list)
    core_step = engine.core.step

    def timed() -> Any:
        produced = core_step()
        now = clock()
        for rid, _index, _sampled in produced.tokens if produced is not None else ():
            times[rid].append(now)
        return produced

    engine.core.step = timed  # type: ignore[method-assign]
    return times


def run(
    loaded: LoadedModel, chunk: int | None, trace: list[Arrival], streams: int, quiet_s: float, clock: Clock
) -> dict[str, float]:
    engine = Engine(loaded, Limits() if chunk is None else Limits(prefill_chunk=chunk))
    times = token_times(engine, clock)
    for i in range(streams):
        engine.add(
            f"s{i}", prompt=story_prompt(i), config=GenerationConfig(max_tokens=2000, temperature=0.0, ignore_eos=True)
        )
    while min((len(times[f"s{i}"]) for i in range(streams)), default=0) < 4:
        engine.step()
    quiet_start = clock()
    while clock() - quiet_start < quiet_s:
        engine.step()
    start = clock()
    pending, added, done = list(trace), dict[str, float](), set[str]()
    while pending or len(done) < len(trace):
        now = clock()
        while pending and pending[0].at <= now - start:
            a = pending.pop(0)
            rid = f"a{len(added)}"
            engine.add(rid, prompt=a.prompt, config=GenerationConfig(max_tokens=16, temperature=0.0, ignore_eos=True))
            added[rid] = now
        done.update(rid for rid, rec in engine.step() if rec.usage is not None)
    end = clock()

    def gaps(lo: float, hi: float) -> list[float]:
        return [
            b - a
            for i in range(streams)
            for a, b in zip(times[f"s{i}"], times[f"s{i}"][1:], strict=False)
            if lo <= a and b <= hi
        ]

    loaded_gaps, quiet_gaps = gaps(start, end), gaps(quiet_start, start)
    ttft = [times[rid][0] - t for rid, t in added.items()]
    tokens = sum(1 for ts in times.values() for t in ts if start <= t <= end)
    return {
        "quiet_p50": percentile(quiet_gaps, 50) * 1000,
        "itl_p50": percentile(loaded_gaps, 50) * 1000,
        "itl_p99": percentile(loaded_gaps, 99) * 1000,
        "itl_max": max(loaded_gaps) * 1000,
        "ttft_p50": percentile(ttft, 50) * 1000,
        "ttft_p99": percentile(ttft, 99) * 1000,
        "tok_s": tokens / (end - start),
        "window_s": end - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="off,32,64", help="comma-separated: off, default or a token count")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--arrivals", type=int, default=10)
    parser.add_argument("--mean-gap", type=float, default=1.5, help="seconds between arrivals, on average")
    parser.add_argument("--quiet", type=float, default=3.0, help="seconds of plain decoding measured first")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--cpu-clock",
        action="store_true",
        help="time everything (arrivals too) in this thread's CPU time, with one torch thread: what the run "
        "would take with a core of its own, on a machine busy with other work",
    )
    args = parser.parse_args(argv)
    if args.threads or args.cpu_clock:  # on a busy machine one thread is steadier (no team waiting for a core)
        torch.set_num_threads(1 if args.cpu_clock else args.threads)
    clock = time.thread_time if args.cpu_clock else time.perf_counter
    loaded = load_model("smollm2", str(ensure_smollm2()))
    trace = make_trace(loaded, args.arrivals, args.mean_gap)
    settings = {c: None if c == "default" else 10**9 if c == "off" else int(c) for c in args.chunks.split(",")}
    print(f"torch threads {torch.get_num_threads()}; {args.streams} streams; arrivals {[a.tokens for a in trace]}")
    heads = ("quiet50", "itl50", "itl99", "max", "p99/p50", "ttft50", "ttft99", "tok/s")
    print(f"{'chunk':>8} " + " ".join(f"{h:>7}" for h in heads))
    for _round in range(args.repeat):
        for name, chunk in settings.items():
            r = run(loaded, chunk, trace, args.streams, args.quiet, clock)
            print(
                f"{name:>8} {r['quiet_p50']:7.0f} {r['itl_p50']:7.0f} {r['itl_p99']:7.0f} {r['itl_max']:7.0f}"
                f" {r['itl_p99'] / r['itl_p50']:7.2f} {r['ttft_p50']:7.0f} {r['ttft_p99']:7.0f} {r['tok_s']:6.1f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
