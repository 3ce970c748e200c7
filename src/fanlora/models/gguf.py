"""A GGUF file -> a safetensors checkpoint folder with its tokenizer.

transformers de-quantises a GGUF file to float32 when it loads one, but a model loaded that
way refuses ``save_pretrained`` (it carries a GGUF ``quantization_config``). So the
de-quantised tensors go into a model built from the same config, without the quantisation
entry, on the meta device (``load_state_dict(assign=True)`` takes the tensors over: no
second copy in memory), and that one is saved; it later loads in a second or two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging


@dataclass(frozen=True)
class TokenizerFix:
    """What a GGUF file's tokenizer lacks: a chat template (a base model's file often has
    none) and the token that ends a turn, when it is not the file's eos."""

    chat_template: str | None = None
    eos_token: str | None = None


def fix_tokenizer(tokenizer, fix: TokenizerFix, max_length: int):
    """The tokenizer with ``fix`` applied and its length limit set to the model's context
    (a GGUF tokenizer leaves it unset)."""
    tokenizer.model_max_length = max_length
    if fix.chat_template is not None:
        tokenizer.chat_template = fix.chat_template
    if fix.eos_token is not None:
        tokenizer.eos_token = fix.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def convert_gguf(
    gguf: Path,
    dest: Path,
    dtype: torch.dtype,
    name_or_path: str,
    fix: TokenizerFix = TokenizerFix(),
) -> None:
    """Write the model in file ``gguf`` to ``dest`` as safetensors in ``dtype``, with its
    tokenizer; ``name_or_path``: the upstream model it is, recorded in the config."""
    hf_logging.disable_progress_bar()
    folder, name = gguf.parent, gguf.name
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name_or_path
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantised.state_dict(), assign=True, strict=True)
    model.tie_weights()
    del quantised
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    tokenizer = fix_tokenizer(tokenizer, fix, config.max_position_embeddings)
    if fix.eos_token is not None:
        ends = [config.eos_token_id, tokenizer.eos_token_id]
        model.generation_config.eos_token_id = sorted({e for e in ends if e is not None})
    model.to(dtype).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
