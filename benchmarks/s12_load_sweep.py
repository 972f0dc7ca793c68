"""Scenario 12: the builtin engine under Poisson traffic, swept from light to overload, with
vLLM's own OpenAI server on the same traces as the reference column (when a Python with
``vllm`` is found: see benchmarks/vllm_ref.py; otherwise that column is empty).

Both sides are driven by the same client code (the official ``openai`` async client,
``benchmarks.vllm_ref.poisson_trace``): tokenrelay through its gateway (``tokenrelay serve``)
and one worker with default settings, vLLM through its API server.  The traces have scenario
4's shape (story prompts, greedy, ``ignore_eos``, ``max_tokens`` 16..128, seed 1234); the
offered load is a share (25 % .. 125 %) of tokenrelay's batch-16 capacity measured at the
start of the run with the same client, so both engines see identical arrivals.  Both servers
are up for the whole scenario and take the traces in turn, trace by trace (ours, then vLLM's):
the speed of this project's VMs drifts by up to a third within minutes (a fixed matrix
product timed between runs: 0.8-1.4 ms), and running all of ours before all of vLLM's put
that drift into the ratios.  While ours runs, vLLM's server is stopped (SIGSTOP,
`vllm_ref.Server.paused`): idle but running it spent 1-15 % of a core polling, and our TTFT
p99 went from ~0.3 to 0.6-0.9 s beside it.  Our idle worker and gateway took under 1 %
(``top``) while vLLM's turn ran.

Last comes scenario 4's own trace (benchmarks/s4_poisson.py: 64 requests, ~134 offered
tokens/s), the load the goals are stated at (issue "builtin engine under real traffic"):
tokens/s >= 0.9 of vLLM's, TTFT p50 and p99 <= 3x vLLM's; everywhere: inter-token p99 <= 2x
its p50.  (The sweep's 100 % point used to stand in for it, while the batch-16 capacity was
about scenario 4's offered load; the engine has outgrown that.)

Both sides run fp32 (the builtin engine's CPU default); with ``TOKENRELAY_DTYPE=bfloat16`` in
the environment both run bf16 (the worker reads it; ``vllm_ref.server_dtype``).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator

import httpx

from benchmarks import machine_noise
from benchmarks.common import Context, Row
from benchmarks.prompts import story_prompt, story_prompts
from benchmarks.s4_poisson import SEED
from benchmarks.s10_gateway import gateway
from benchmarks.vllm_ref import Arrival, Server, find_vllm, poisson_trace, s4_trace, throughput, vllm_process

NAME = "12 load sweep"
LOADS = (0.25, 0.5, 0.75, 1.0, 1.25)
SCENARIO_4 = "scenario 4's trace"  # where the tokens/s and TTFT goals are checked
Result = dict[str, float]


def run(ctx: Context) -> list[Row]:
    n, max_len, cap_tokens = (12, 32, 32) if ctx.quick else (64, 128, 128)
    probe_s = 3.0 if ctx.quick else 10.0  # the machine-noise probe, before and after the traces
    ctx.stack()  # one worker, default settings
    with gateway(ctx.url) as (base, _proc), _vllm() as ref:
        served = _served_model(base)
        throughput(base, story_prompts(2), 4, 2, model=served)  # warm-ups
        if ref is not None:
            throughput(ref.base, story_prompts(2), 4, 2)
        with _paused(ref):
            capacity = throughput(base, story_prompts(16), cap_tokens, 16, model=served)
            noise = [machine_noise.measure(probe_s)]  # both engines idle
        traces = {f"{load:.0%} load": _trace(n, max_len, load * capacity) for load in LOADS}
        traces[SCENARIO_4] = s4_trace(ctx.quick)
        ours, theirs = {}, {}
        for at, trace in traces.items():  # interleaved: see the module docstring
            with _paused(ref):
                ours[at] = poisson_trace(base, trace, model=served)
            if ref is not None:
                theirs[at] = poisson_trace(ref.base, trace)
        with _paused(ref):
            noise.append(machine_noise.measure(probe_s))
    return [*_rows(capacity, ours, theirs), _noise_row(noise)]


def _served_model(base: str) -> str:
    return str(httpx.get(base + "/v1/models", timeout=30).json()["data"][0]["id"])


def _trace(n: int, max_len: int, offered_tok_s: float) -> list[Arrival]:
    """``n`` arrivals of scenario 4's shape whose mean offered load is ``offered_tok_s``."""
    rng = random.Random(SEED)
    lengths = [rng.randint(16, max_len) for _ in range(n)]
    rate = offered_tok_s / (sum(lengths) / n)  # requests per second
    gaps = [rng.expovariate(rate) for _ in range(n)]
    return [Arrival(g, story_prompt(i), m) for i, (g, m) in enumerate(zip(gaps, lengths, strict=True))]


@contextlib.contextmanager
def _vllm() -> Iterator[Server | None]:
    """vLLM's server beside our worker (None when vllm is not installed)."""
    python = find_vllm()
    if python is None:
        yield None
        return
    from workers.model_store import ensure_smollm2

    with vllm_process(str(ensure_smollm2()), python) as server:
        yield server


def _paused(ref: Server | None) -> contextlib.AbstractContextManager[None]:
    """vLLM's server stopped while ours is measured (nothing to stop without one)."""
    return ref.paused() if ref is not None else contextlib.nullcontext()


def _rows(capacity: float, ours: dict[str, Result], theirs: dict[str, Result]) -> list[Row]:
    label = "vLLM server" if theirs else "vLLM server (not installed)"
    rows = [Row(NAME, "batch-16 capacity (gateway, 16 streams)", capacity, None, "tok/s")]
    for at, mine in ours.items():
        ref = theirs.get(at, {})

        def row(metric: str, key: str, unit: str, check: Callable[[float, float], bool] | None = None,
                goal: str = "", *, at: str = at, mine: Result = mine, ref: Result = ref) -> Row:  # fmt: skip
            value, other = mine[key], ref.get(key)
            passed = check(value, other) if check is not None and other is not None else None
            return Row(NAME, f"{metric}, {at}", value, other, unit, goal if check else "", passed, ref_label=label)

        scenario_4 = at == SCENARIO_4
        rows += [
            row("tokens/s", "tok_s", "tok/s", (lambda a, b: a >= 0.9 * b) if scenario_4 else None, ">= 0.9x"),
            row("TTFT p50", "ttft_p50_ms", "ms", (lambda a, b: a <= 3 * b) if scenario_4 else None, "<= 3x"),
            row("TTFT p99", "ttft_p99_ms", "ms", (lambda a, b: a <= 3 * b) if scenario_4 else None, "<= 3x"),
            row("inter-token p50", "itl_p50_ms", "ms"),
            Row(NAME, f"inter-token p99, {at}", mine["itl_p99_ms"], ref.get("itl_p99_ms"), "ms",
                f"p99/p50 {_spread(mine):.1f} <= 2",
                mine["itl_p99_ms"] <= 2 * mine["itl_p50_ms"], ref_label=label,
                note=f"offered {mine['offered_tok_s']:.0f} tok/s, {mine['requests']:.0f} requests{_their_ratio(ref)}"),
        ]  # fmt: skip
    return rows


def _noise_row(probes: list[machine_noise.Noise]) -> Row:
    """The machine's own spread, before and after the traces: an inter-token p99/p50 near it
    is the machine's, not the engine's (benchmarks/machine_noise.py)."""
    worst = max(probe.unit.ratio for probe in probes)
    note = "; ".join(f"{when}: {p.describe()}" for when, p in zip(("before", "after"), probes, strict=False))
    return Row(NAME, "machine noise: a fixed step's p99/p50 (worse of before/after)", worst, None, "x", note=note)


def _their_ratio(ref: Result) -> str:
    """vLLM's own inter-token p99/p50 on the trace: how far the same arrivals spread a
    reference engine's gaps (it is over 2 at overload too: README, "ninth pass")."""
    return f"; vLLM's own p99/p50 {_spread(ref):.1f}" if "itl_p99_ms" in ref else ""


def _spread(result: Result) -> float:
    """Inter-token p99 over p50: how uneven a trace's token gaps were."""
    return result["itl_p99_ms"] / result["itl_p50_ms"]
