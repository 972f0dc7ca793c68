"""Prompts of similar length (a few words apart), so batch runs pad little."""

from __future__ import annotations

_SUBJECTS = [
    "a lighthouse keeper",
    "a young baker",
    "an old sailor",
    "a curious robot",
    "a retired teacher",
    "a street musician",
    "a night-shift nurse",
    "a mountain guide",
    "a clockmaker",
    "a beekeeper",
    "a chess player",
    "a train conductor",
    "a painter",
    "a fisherman",
    "a librarian",
    "a gardener",
]


def story_prompt(i: int) -> str:
    subject = _SUBJECTS[i % len(_SUBJECTS)]
    # A completion, not an instruction: without the chat template SmolLM2-Instruct answers an
    # instruction with EOS first, and a first token without text would skew TTFT.
    return f"Once upon a time, {subject} found a mysterious letter on the doorstep. It said"


def story_prompts(n: int) -> list[str]:
    return [story_prompt(i) for i in range(n)]
