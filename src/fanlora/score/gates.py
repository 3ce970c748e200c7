"""The binary LoRA gate g_{m,l} of eq. 2, one per wrapped module.

``x' = x W + g * x W^A W^B + b``: a closed gate switches the module's LoRA path off with
PEFT's own per-layer ``enable_adapters(False)`` (the path is then not computed at all). For
gradients (Michel et al.'s sensitivity) the gate becomes a tensor multiplying PEFT's
``scaling``, so autograd gives dL/dg for every module in one backward pass.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager

import torch

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout

Key = tuple[int, str]  # (layer, kind)


class Gates:
    """Switches for the LoRA modules of a PEFT model, addressed by (layer, kind)."""

    def __init__(self, peft_model, layout: ModuleLayout):
        from peft.tuners.lora import LoraLayer

        named = dict(peft_model.base_model.model.named_modules())
        self.modules: dict[Key, LoraLayer] = {}
        for layer in range(layout.num_layers):
            for kind in layout.kinds:
                module = named.get(layout.name(layer, kind))
                if isinstance(module, LoraLayer):
                    self.modules[(layer, kind)] = module
        if not self.modules:
            raise FanLoRAError(
                "the adapter has no LoRA modules on this model's layers: scoring needs a "
                "LoRA adapter (a full-LoRA run of step 1)"
            )
        self.adapter = peft_model.active_adapter
        self.layout = layout

    @property
    def keys(self) -> list[Key]:
        return list(self.modules)

    @property
    def layers(self) -> list[int]:
        return sorted({layer for layer, _ in self.modules})

    def set_open(self, open_keys: Iterable[Key]) -> None:
        """Open exactly ``open_keys``; close every other gate."""
        chosen = set(open_keys)
        for key, module in self.modules.items():
            module.enable_adapters(key in chosen)

    def all_open(self) -> None:
        self.set_open(self.modules)

    @contextmanager
    def differentiable(self):
        """Yield {key: g} leaf tensors at 1.0 that scale each LoRA path (for dL/dg)."""
        self.all_open()
        saved = {key: m.scaling[self.adapter] for key, m in self.modules.items()}
        gates = {key: torch.ones((), requires_grad=True) for key in self.modules}
        try:
            for key, module in self.modules.items():
                module.scaling[self.adapter] = saved[key] * gates[key]
            yield gates
        finally:
            for key, module in self.modules.items():
                module.scaling[self.adapter] = saved[key]
