"""Scenario 1: one greedy stream, tokens/s through the pipeline vs in-process generate."""

from __future__ import annotations

from benchmarks.common import Context, Row, median
from benchmarks.prompts import story_prompt
from benchmarks.timing import run_one

NAME = "1 single stream"
GOAL = 0.97


def run(ctx: Context) -> list[Row]:
    tokens, repeats = (32, 1) if ctx.quick else (128, 3)
    prompt = story_prompt(0)
    ref, stack = ctx.ref(), ctx.stack()
    config = {"max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    ref.stream(prompt, 4)  # warm-ups: the first calls pay one-off setup
    run_one(stack.producer, stack.reader, prompt, **{**config, "max_tokens": 4})
    refs, traces = [], []
    for _ in range(repeats):  # interleaved (never concurrent), so load drift hits both alike
        refs.append(ref.stream(prompt, tokens))
        traces.append(run_one(stack.producer, stack.reader, prompt, **config))
    pipe_tps = median([t.tokens / t.elapsed_s for t in traces])
    ref_tps = median([r.tokens_per_s for r in refs])
    same = all(t.token_ids == refs[0].token_ids for t in traces)
    decode = median([t.usage.decode_tokens_per_s or 0.0 for t in traces if t.usage])
    return [
        Row(
            NAME,
            f"tokens/s ({tokens} tok, median of {repeats})",
            pipe_tps,
            ref_tps,
            "tok/s",
            f"ratio >= {GOAL}",
            pipe_tps / ref_tps >= GOAL,
            note=f"greedy tokens identical to in-process: {same}; worker-side decode {decode:.1f} tok/s",
        ),
    ]
