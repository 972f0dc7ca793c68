"""Shared fixtures.  Nothing here downloads anything: HF_HUB_OFFLINE is forced on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A random Llama of a few hundred thousand parameters with a byte-level BPE tokenizer
    trained on multilingual words: builds in seconds, splits many characters across tokens."""
    from tests.support.tiny_model import build_tiny_model

    yield build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real model, converted once into the tokenrelay cache."""
    from workers.model_store import ensure_smollm2

    return ensure_smollm2()
