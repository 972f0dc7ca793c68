"""Turning a request's prompt or chat messages into token ids."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from workers.engine.model_runner import LoadedModel


class PromptError(ValueError):
    """The prompt cannot be served; ``kind`` becomes the record's ``error.type``."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


def encode_prompt(loaded: LoadedModel, prompt: str | None, messages: list[dict[str, str]] | None) -> list[int]:
    tok = loaded.tokenizer
    try:
        if messages is not None:
            if not getattr(tok, "chat_template", None):
                raise PromptError("no_chat_template", f"{loaded.name} has no chat template; send a plain prompt")
            # Render to text, then encode without adding special tokens again: the template
            # already holds them (and apply_chat_template's return type varies by version).
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            ids = tok.encode(text, add_special_tokens=False)
        else:
            ids = tok.encode(prompt or "")
    except PromptError:
        raise
    except Exception as exc:  # tokenizers raise assorted types on odd input
        raise PromptError("tokenizer_error", f"{type(exc).__name__}: {exc}") from exc
    if not ids:
        raise PromptError("empty_prompt", "the prompt encodes to no tokens")
    return [int(i) for i in ids]
