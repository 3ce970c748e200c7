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
from peft.tuners.lora import LoraLayer

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout

Key = tuple[int, str]  # (layer, kind)


def refuse_ungated(peft_model, named: dict, layout: ModuleLayout) -> None:
    """Refuse an adapter with trained weights outside the layout's modules (LoRA on
    ``lm_head`` or the embeddings, ``modules_to_save``): no gate would close them, so
    M_null and M_only(m,l) would keep them on and eq. 3's terms would be wrong."""
    gated = set(layout.all_names())
    extra = [n for n, m in named.items() if isinstance(m, LoraLayer) and n not in gated]
    config = peft_model.peft_config[peft_model.active_adapter]
    saved = list(getattr(config, "modules_to_save", None) or [])
    if extra or saved:
        what = [f"LoRA on {n}" for n in extra] + [f"modules_to_save {n}" for n in saved]
        raise FanLoRAError(
            f"the adapter trains modules that scoring cannot gate: {', '.join(what[:6])}"
            f"{' ...' if len(what) > 6 else ''}. Gates cover the decoder layers' linear "
            f"modules only ({', '.join(layout.kinds)}); score an adapter trained on those"
        )


class Gates:
    """Switches for the LoRA modules of a PEFT model, addressed by (layer, kind)."""

    def __init__(self, peft_model, layout: ModuleLayout):
        named = dict(peft_model.base_model.model.named_modules())
        refuse_ungated(peft_model, named, layout)
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
    def differentiable(self, value: float = 1.0):
        """Yield {key: g} leaf tensors at ``value`` that scale each LoRA path (for dL/dg):
        at 1.0 every path is on (M_all), at 0.0 every path is off but still computed, so
        dL/dg at M_null exists."""
        self.all_open()
        saved = {key: m.scaling[self.adapter] for key, m in self.modules.items()}
        gates = {key: torch.tensor(float(value), requires_grad=True) for key in self.modules}
        try:
            for key, module in self.modules.items():
                module.scaling[self.adapter] = saved[key] * gates[key]
            yield gates
        finally:
            for key, module in self.modules.items():
                module.scaling[self.adapter] = saved[key]
