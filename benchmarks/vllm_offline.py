"""vLLM's own offline generation: the reference for the vLLM engine's benchmarks and tests.

Run as a script in a fresh interpreter (vLLM binds threads and sets torch options for the whole
process, and it may start its engine core with multiprocessing *spawn*, which re-imports the
main module: hence nothing runs at import time)::

    python -m benchmarks.vllm_offline MODEL_DIR < request.json > result.json

``request.json``: ``{"prompts": [[token ids], ...], "max_tokens": N, "engine_args": {...}}``;
greedy, ``ignore_eos``.  The result: ``{"token_ids": [[...], ...], "seconds": generate's wall
time}``.  `offline_generate` does the round trip from a test.
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
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.vllm_offline", model_dir],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
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
    llm = LLM(model=sys.argv[1], **{**ENGINE_DEFAULTS, **request["engine_args"]})
    params = SamplingParams(temperature=0.0, max_tokens=request["max_tokens"], ignore_eos=True, detokenize=False)
    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in request["prompts"]]
    llm.generate(prompts[:1], params, use_tqdm=False)  # warm-up, as the worker does at start
    t0 = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - t0
    print(MARK + json.dumps({"token_ids": [list(o.outputs[0].token_ids) for o in outputs], "seconds": seconds}))


if __name__ == "__main__":
    main()
