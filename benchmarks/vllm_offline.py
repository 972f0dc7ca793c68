"""vLLM's own offline generation: the reference for the vLLM engine's benchmarks and tests.

Run as a script in a fresh interpreter (vLLM binds threads and sets torch options for the whole
process, and it may start its engine core with multiprocessing *spawn*, which re-imports the
main module: hence nothing runs at import time)::

    python -m benchmarks.vllm_offline MODEL_DIR < request.json > result.json

``request.json``: ``{"prompts": [[token ids], ...], "max_tokens": N, "engine_args": {...}}``;
greedy, ``ignore_eos``.  The result: ``{"token_ids": [[...], ...], "seconds": generate's wall
time}``.  `offline_generate` does the round trip from a test.

A request may instead hold ``"jobs": [{"prompts": [...], "max_tokens": N, "repeats": R}, ...]``
(one engine start for several measurements, as benchmark scenario 14 needs): each job's
``generate`` runs ``R`` times after the one warm-up; the result then holds ``"jobs": [{"token_ids":
[...], "seconds": [one per repeat]}, ...]`` and ``"startup_s"`` (building ``LLM``).
`offline_jobs` does that round trip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

# The vLLM engine's defaults on CPU (workers/engine/vllm_core.py): the same here, so that the
# two run the same numerics.
MARK = "vllm-offline-result: "
ENGINE_DEFAULTS: dict[str, Any] = {"dtype": "float32", "seed": 0, "max_num_seqs": 64}


def offline_generate(
    model_dir: str, prompts: list[list[int]], max_tokens: int, engine_args: dict[str, Any] | None = None
) -> dict[str, Any]:
    request = {"prompts": prompts, "max_tokens": max_tokens, "engine_args": engine_args or {}}
    return _round_trip(model_dir, request)


def offline_jobs(
    model_dir: str,
    jobs: list[dict[str, Any]],
    engine_args: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 1800,
) -> dict[str, Any]:
    """Several timed ``generate`` calls on one engine: ``jobs`` as in the module docstring;
    ``env``: more environment for the interpreter (e.g. ``VLLM_ENABLE_V1_MULTIPROCESSING``)."""
    return _round_trip(model_dir, {"jobs": jobs, "engine_args": engine_args or {}}, timeout_s, env)


def _round_trip(
    model_dir: str, request: dict[str, Any], timeout_s: float = 600, extra_env: dict[str, str] | None = None
) -> dict[str, Any]:
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **(extra_env or {})}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.vllm_offline", model_dir],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout_s,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"vLLM offline generate failed ({done.returncode}):\n{done.stderr[-4000:]}")
    # vLLM logs on stdout too: the result is the one line that starts with MARK.
    line = next(x for x in reversed(done.stdout.splitlines()) if x.startswith(MARK))
    result: dict[str, Any] = json.loads(line[len(MARK) :])
    return result


def main() -> None:
    import time

    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    request = json.loads(sys.stdin.read())
    started = time.perf_counter()
    llm = LLM(model=sys.argv[1], **{**ENGINE_DEFAULTS, **request["engine_args"]})
    startup_s = time.perf_counter() - started

    def params(max_tokens: int) -> SamplingParams:
        return SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, detokenize=False)

    def timed(ids: list[list[int]], max_tokens: int) -> tuple[list[list[int]], float]:
        prompts = [TokensPrompt(prompt_token_ids=x) for x in ids]
        t0 = time.perf_counter()
        outputs = llm.generate(prompts, params(max_tokens), use_tqdm=False)
        seconds = time.perf_counter() - t0
        return [list(o.outputs[0].token_ids) for o in outputs], seconds

    jobs = request.get("jobs")
    first = jobs[0]["prompts"] if jobs else request["prompts"]
    timed(first[:1], 4 if jobs else request["max_tokens"])  # warm-up, as the worker does at start
    if not jobs:
        token_ids, seconds = timed(request["prompts"], request["max_tokens"])
        print(MARK + json.dumps({"token_ids": token_ids, "seconds": seconds}))
        return
    results = []
    for job in jobs:
        runs = [timed(job["prompts"], job["max_tokens"]) for _ in range(int(job.get("repeats", 1)))]
        results.append({"token_ids": runs[0][0], "seconds": [s for _ids, s in runs]})
    print(MARK + json.dumps({"jobs": results, "startup_s": startup_s}))


if __name__ == "__main__":
    main()
