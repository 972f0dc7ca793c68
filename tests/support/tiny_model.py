"""A tiny random Llama with a multilingual byte-level BPE tokenizer, built in seconds.

Tests need a real ``transformers`` model folder without downloading anything.  The tokenizer is
trained on words of many scripts with a small vocabulary, so most non-ASCII characters end up
split across several byte-level tokens: exactly the case the streaming detokenizer must handle.
Everything is seeded, so two builds give the same files.
"""

from __future__ import annotations

from pathlib import Path

BOS = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [BOS, IM_START, IM_END]
VOCAB_SIZE = 800
SEED = 1234
# Wider than Llama's default 0.02: with near-uniform logits greedy decoding repeats one token
# forever; at 0.3 it wanders over the vocabulary and splits characters often.
INITIALIZER_RANGE = 0.3

# ChatML, as SmolLM2 uses it, minus SmolLM2's default system prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_LOCALES = ("ja_JP", "zh_CN", "ru_RU", "el_GR", "ar_AA", "hi_IN", "ko_KR", "de_DE", "fr_FR", "en_US")
_EMOJI = "😀😂🥲😍🤔🙏👍🎉🔥✨🚀🌍🍣🐍🧪👩‍👩‍👧🇯🇵❤️"


def corpus_lines() -> list[str]:
    """Words, names and cities of several locales (hi_IN and ko_KR have Latin lorem words,
    so names and cities bring in their scripts), plus emoji."""
    from faker import Faker

    lines: list[str] = []
    for index, locale in enumerate(_LOCALES):
        fake = Faker(locale)
        fake.seed_instance(SEED + index)
        for _ in range(40):
            lines.append(" ".join([*fake.words(6), fake.name(), fake.city()]))
    lines.append(" ".join(_EMOJI))
    return lines


def build_tokenizer() -> object:
    """A ``PreTrainedTokenizerFast`` with ChatML special tokens (typed loosely: transformers 5
    returns its ``TokenizersBackend`` class under that name)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(corpus_lines(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=IM_END,
        pad_token=BOS,
        unk_token=None,
        extra_special_tokens=[IM_START],
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(path: Path) -> Path:
    """Write a random ``LlamaForCausalLM`` and its tokenizer into ``path``; return ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}  # type: ignore[attr-defined]
    config = LlamaConfig(
        vocab_size=len(tokenizer),  # type: ignore[arg-type]
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        initializer_range=INITIALIZER_RANGE,
        bos_token_id=ids[BOS],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[BOS],
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = ids[BOS]
    model.generation_config.eos_token_id = ids[IM_END]
    model.generation_config.pad_token_id = ids[BOS]
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)  # type: ignore[attr-defined]
    return path
