"""A copy of the tiny model that produces NaN logits for prompts holding one character.

A natural model failure for tests: the embedding row of ``POISON``'s token is NaN, so any
sequence that contains it gets NaN logits, while every other prompt works.  Input and
output embeddings are untied first, or the NaN would reach every request's logits.
"""

from __future__ import annotations

import shutil
from pathlib import Path

POISON = "~"


def build_broken_model(tiny_dir: Path, target: Path) -> Path:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dir)
    (poison_id,) = tok.encode(POISON, add_special_tokens=False)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    model.config.tie_word_embeddings = False
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
    head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    model.lm_head = head
    with torch.no_grad():
        model.get_input_embeddings().weight[poison_id] = float("nan")
    shutil.rmtree(target, ignore_errors=True)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return target
