"""A FanLoRA setting as a vLLM deployment, and what a setting costs per engine.

vLLM wraps with LoRA only the modules named by ``lora_target_modules``, matched by their
full name at vLLM's packed granularity (``model.layers.N.self_attn.qkv_proj``,
``model.layers.N.mlp.gate_up_proj``); every wrapped module runs the LoRA kernels for each
of its slices. An adapter with weights outside the wrapped modules is served as the base
model there without a word, so the deployment is checked against its adapters.

What a setting costs per engine: :mod:`fanlora.engines`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import safe_open

from fanlora.engines.vllm import ENGINE as VLLM
from fanlora.errors import FanLoRAError
from fanlora.models.adapters import check_adapter_folder
from fanlora.models.provenance import adapter_made_for, check_made_for
from fanlora.modules.discovery import ModuleLayout

# vLLM's LoRAConfig accepts these max_lora_rank values (MaxLoRARanks in vllm/config/lora.py)
VLLM_MAX_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def runtime_modules(layout: ModuleLayout, layers: list[list[str]]) -> list[str]:
    """Full vLLM names of the packed modules holding the kept kinds, layer by layer."""
    return [
        f"{layout.layers_prefix}.{i}.{unit}"
        for i, kinds in enumerate(layers)
        for unit in VLLM.wrapped(layout, kinds)
    ]


def adapter_modules(folder: str | Path) -> tuple[set[str], int]:
    """(module paths carrying LoRA weights, the largest rank) of a PEFT adapter folder."""
    path = check_adapter_folder(folder) / "adapter_model.safetensors"
    modules, rank = set(), 0
    with safe_open(path, "pt") as handle:
        names = handle.keys()  # a safetensors handle, not a dict
        for key in names:
            if ".lora_A" in key:
                modules.add(key.removeprefix("base_model.model.").split(".lora_A")[0])
                rank = max(rank, handle.get_slice(key).get_shape()[0])
    if not modules:
        raise FanLoRAError(f"{folder} holds no LoRA weights (lora_A): vLLM serves LoRA only")
    return modules, rank


def to_runtime(module: str, layout: ModuleLayout) -> str | None:
    """vLLM's runtime name of HF module path ``module``, or None when it is not a kind."""
    paths = VLLM.units(layout)
    for kind, inner in layout.kinds.items():
        head, dot, tail = module.rpartition(f".{inner}")
        if dot and not tail and head.startswith(f"{layout.layers_prefix}."):
            return f"{head}.{paths[kind]}"
    return None


@dataclass
class Deployment:
    """What ``vllm serve`` (or ``LLM(...)``) needs to serve a setting's adapters."""

    model: str
    target_modules: list[str]
    max_lora_rank: int
    max_loras: int
    adapters: dict[str, str] = field(default_factory=dict)

    def llm_kwargs(self) -> dict:
        return {
            "model": self.model,
            "enable_lora": True,
            "lora_target_modules": self.target_modules,
            "max_lora_rank": self.max_lora_rank,
            "max_loras": self.max_loras,
        }

    def serve_options(self) -> list[str]:
        """The server's LoRA options (what follows the model in ``vllm serve MODEL``)."""
        options = ["--enable-lora", "--max-lora-rank", str(self.max_lora_rank)]
        options += ["--max-loras", str(self.max_loras)]
        options += ["--lora-target-modules", *self.target_modules]
        if self.adapters:
            options += ["--lora-modules", *(f"{n}={p}" for n, p in self.adapters.items())]
        return options

    def serve_command(self) -> list[str]:
        return ["vllm", "serve", self.model, *self.serve_options()]

    def serve_script(self) -> str:
        return (
            "#!/bin/sh\n# written by fanlora export vllm\nexec "
            + shlex.join(self.serve_command())
            + "\n"
        )


def check_adapters(deployment: Deployment, layout: ModuleLayout) -> None:
    """Refuse an adapter with weights outside the deployment's modules (vLLM would serve it
    as the base model there) or above its max_lora_rank, naming the adapter and modules."""
    wrapped = set(deployment.target_modules)
    for name, folder in deployment.adapters.items():
        modules, rank = adapter_modules(folder)
        runtime = {m: to_runtime(m, layout) for m in sorted(modules)}
        outside = [m for m, r in runtime.items() if r is None or r not in wrapped]
        if outside:
            raise FanLoRAError(
                f"adapter {name} ({folder}) has LoRA weights on {len(outside)} module(s) "
                f"outside the deployment, e.g. {outside[:3]}: vLLM would serve them as the "
                "base model. Export a setting that covers them, or train on this setting"
            )
        if rank > deployment.max_lora_rank:
            raise FanLoRAError(
                f"adapter {name} ({folder}) has rank {rank}, above --max-lora-rank "
                f"{deployment.max_lora_rank}"
            )


def parse_adapters(items: list[str]) -> dict[str, str]:
    """``NAME=DIR`` items as a name -> folder mapping; a malformed or repeated one refused."""
    adapters = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise FanLoRAError(f"--adapter takes NAME=DIR, got {item!r}")
        if name in adapters:
            raise FanLoRAError(f"--adapter {name} is given twice")
        adapters[name] = folder
    return adapters


def deployment_for(
    setting,
    adapters: dict[str, str],
    model: str,
    max_loras: int | None = None,
    max_lora_rank: int | None = None,
    allow_other_model: bool = False,
) -> Deployment:
    """The deployment of ``setting`` serving ``adapters``, checked against them (adapters
    made for another model, outside it or above its rank refused, naming them) before
    anything starts."""
    targets = runtime_modules(setting.layout, setting.layers)
    ranks = [adapter_modules(folder)[1] for folder in adapters.values()]
    for folder in adapters.values():
        made = adapter_made_for(folder)
        check_made_for(made, setting.model, setting.layout, allow_other_model)
    max_loras = max_loras if max_loras is not None else max(len(adapters), 1)
    if max_loras < 1:
        raise FanLoRAError(f"--max-loras must be >= 1, got {max_loras}")
    deployment = Deployment(model, targets, max_rank_for(ranks, max_lora_rank), max_loras)
    deployment.adapters = dict(adapters)
    check_adapters(deployment, setting.layout)
    return deployment


def max_rank_for(ranks: list[int], requested: int | None) -> int:
    """The smallest rank vLLM accepts that covers ``ranks`` (or ``requested``, checked)."""
    if requested is not None:
        if requested not in VLLM_MAX_RANKS:
            raise FanLoRAError(f"--max-lora-rank must be one of {VLLM_MAX_RANKS}, got {requested}")
        return requested
    need = max(ranks, default=16)
    fits = [r for r in VLLM_MAX_RANKS if r >= need]
    if not fits:
        raise FanLoRAError(f"rank {need} is above vLLM's largest max_lora_rank 512")
    return fits[0]
