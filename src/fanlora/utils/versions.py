"""The versions every result file records (fanlora and the libraries that shape numbers)."""

from __future__ import annotations

import platform

import accelerate
import peft
import torch
import transformers

from fanlora import __version__


def versions() -> dict[str, str]:
    return {
        "fanlora": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "accelerate": accelerate.__version__,
        "python": platform.python_version(),
    }
