"""Loading a standard PEFT adapter folder onto its base model, with the checks PEFT skips."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

from peft import PeftModel
from safetensors import safe_open

from fanlora.errors import FanLoRAError
from fanlora.models.loading import load_model
from fanlora.models.provenance import adapter_made_for, check_made_for
from fanlora.modules.discovery import discover_layout


def check_adapter_folder(folder: str | Path) -> Path:
    """The folder must hold adapter_config.json and adapter_model.safetensors."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").is_file():
        raise FanLoRAError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    if not (folder / "adapter_model.safetensors").is_file():
        raise FanLoRAError(f"{folder} has no adapter_model.safetensors")
    return folder


def check_adapter_modules(folder: str | Path, base, model_name: str) -> None:
    """Every LoRA weight in the adapter must belong to a module of ``base`` (PEFT itself
    loads what matches and skips the rest, so a 6-layer adapter would load on 4 layers)."""
    path = check_adapter_folder(folder) / "adapter_model.safetensors"
    with safe_open(path, "pt") as handle:
        keys = list(handle.keys())
    names = set(dict(base.named_modules()))
    wrapped = {
        k.removeprefix("base_model.model.").split(".lora_")[0].split(".ia3_")[0]
        for k in keys
        if ".lora_" in k or ".ia3_" in k
    }
    missing = sorted(n for n in wrapped if n not in names)
    if missing:
        raise FanLoRAError(
            f"the adapter {folder} does not match model {model_name!r}: it has weights "
            f"for modules the model lacks, e.g. {missing[:3]}"
        )


def _is_adalora(folder: str | Path) -> bool:
    config = json.loads((Path(folder) / "adapter_config.json").read_text())
    return config.get("peft_type") == "ADALORA"


def attach_adapter(
    base, folder: str | Path, model_name: str, adapter_name: str = "default", allow_other=False
):
    """``PeftModel.from_pretrained(base, folder)`` after the provenance check (an adapter
    made for another model is refused unless ``allow_other``) and the module check; shape
    mismatches become a FanLoRAError naming the folder and the model."""
    check_made_for(adapter_made_for(folder), model_name, discover_layout(base), allow_other)
    check_adapter_modules(folder, base, model_name)
    try:
        with warnings.catch_warnings():
            if _is_adalora(folder):
                # PEFT's check of rank_pattern keys against module names does not know
                # AdaLoRA's keys (parameter names mapped to kept-rank masks, applied after
                # loading): it names every key as unmatched, though every weight loads
                warnings.filterwarnings("ignore", "The following rank_pattern keys", RuntimeWarning)
            return PeftModel.from_pretrained(base, str(folder), adapter_name=adapter_name)
    except Exception as exc:
        raise FanLoRAError(
            f"the adapter {folder} does not match model {model_name!r}: "
            f"{type(exc).__name__}: {str(exc)[:300]}"
        ) from None


def load_with_adapter(
    model_name: str, adapter: str | Path | None, dtype: str = "float32", allow_other=False
):
    """(model in eval mode without gradients, tokenizer): the base model, with the adapter
    attached when one is given."""
    if adapter:
        check_adapter_folder(adapter)
    model, tokenizer = load_model(model_name, dtype)
    if adapter:
        model = attach_adapter(model, adapter, model_name, allow_other=allow_other)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, tokenizer


def adapter_hash(folder: str | Path) -> str:
    """sha256 (16 hex digits) of the adapter's config and weights."""
    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        path = Path(folder) / name
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
