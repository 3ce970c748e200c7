"""Resolve ``--model`` to a local folder and load it; never download at run time.

``--model`` is, in this order: a preset name (:data:`PRESETS`), a local folder with a
``config.json``, or a Hugging Face id already in the local cache. A preset is written once
into ``$FANLORA_HOME/models/<name>`` (atomically: built in a temporary folder, then renamed)
and loads from there afterwards.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import snapshot_download
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from fanlora.errors import FanLoRAError
from fanlora.models.smollm2 import convert_smollm2
from fanlora.models.tiny import build_tiny_llama
from fanlora.paths import fanlora_home

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _write_tiny(dest: Path, dtype: str) -> None:
    model, tokenizer = build_tiny_llama()
    model.to(DTYPES[dtype]).save_pretrained(dest)
    tokenizer.save_pretrained(dest)


def _write_smollm2(dest: Path, dtype: str) -> None:
    convert_smollm2(dest, DTYPES[dtype])


PRESETS: dict[str, Callable[[Path, str], None]] = {
    "tiny-random-llama": _write_tiny,
    "smollm2-135m": _write_smollm2,
}


def preset_dir(name: str, dtype: str = "float32") -> Path:
    """The cache folder of preset ``name`` in ``dtype``, written on first use."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    dest = fanlora_home() / "models" / f"{name}{suffix}"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        PRESETS[name](tmp, dtype)
        if dest.exists() and not (dest / "config.json").is_file():
            shutil.rmtree(dest)  # a half-written folder: replace it
        try:
            os.replace(tmp, dest)
        except OSError:  # another process finished the same preset first: use theirs
            if not (dest / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model(name: str, dtype: str = "float32") -> Path:
    """A local folder holding ``name``'s config, weights and tokenizer."""
    if dtype not in DTYPES:
        raise FanLoRAError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}")
    if name in PRESETS:
        return preset_dir(name, dtype)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FanLoRAError(f"model folder {path} has no config.json")
        return path
    return _cached_hub_snapshot(name)


def _cached_hub_snapshot(name: str) -> Path:
    try:
        return Path(snapshot_download(name, local_files_only=True))
    except Exception:
        raise FanLoRAError(
            f"model {name!r} is not a preset ({', '.join(PRESETS)}), not a local folder, and "
            "not in the local Hugging Face cache; fanlora never downloads at run time: "
            "pass a folder or a preset"
        ) from None


def load_config(name: str):
    """The model's config (cheap: no weights are read)."""
    return AutoConfig.from_pretrained(resolve_model(name), local_files_only=True)


def load_tokenizer(name: str, dtype: str = "float32"):
    """The model's tokenizer, with a pad token (eos when the model has none)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(name, dtype), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "float32"):
    """(model, tokenizer) for ``name`` in eval mode on the CPU."""
    folder = resolve_model(name, dtype)
    hf_logging.disable_progress_bar()  # one bar per load is noise; fanlora shows its own
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=DTYPES[dtype], local_files_only=True)
    return model.eval(), load_tokenizer(name, dtype)
