"""The ``tiny-random-*`` presets: small LLaMA, Qwen2 and Gemma-3 models from config with
a fixed seed, one entry of :data:`TINY` each. The Qwen2 one has an untied ``lm_head`` (as
Qwen2.5-0.5B from GGUF does); the Gemma-3 one alternates sliding and full attention with a
window shorter than the test sequences, as the real model does at 512.

The tokenizer is byte-level BPE with no merges (every byte is a token), made locally in
milliseconds, with ChatML special tokens and chat template like SmolLM2's, so that the
same formatting code runs on the tiny model and the real one.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_SEED = 0


def make_byte_tokenizer(model_max_length: int = 512):
    """A byte-level tokenizer (vocab: 4 specials + 256 bytes) with a ChatML template."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + alphabet)}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        model_max_length=model_max_length,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=True,
)
# preset name -> (model_type, config beyond _SHAPE)
TINY: dict[str, tuple[str, dict]] = {
    "tiny-random-llama": ("llama", {}),
    "tiny-random-qwen2": ("qwen2", {"tie_word_embeddings": False}),
    "tiny-random-gemma3": (
        "gemma3_text",
        {
            "head_dim": 16,
            "sliding_window": 8,
            "layer_types": ["sliding_attention", "full_attention"] * 2,
        },
    ),
}


def tiny_config(model_type: str, vocab_size: int, **overrides):
    """Config of a tiny model: 4 layers, hidden 64, 4 heads / 2 KV heads, MLP 128."""
    return AutoConfig.for_model(model_type, **{**_SHAPE, "vocab_size": vocab_size, **overrides})


def build_tiny_model(name: str = "tiny-random-llama"):
    """(model, tokenizer) of tiny preset ``name``, identical on every call (seed 0)."""
    model_type, extra = TINY[name]
    tokenizer = make_byte_tokenizer()
    config = tiny_config(
        model_type,
        len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config)
    return model.eval(), tokenizer
