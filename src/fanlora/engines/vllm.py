"""vLLM: q, k, v packed in ``qkv_proj`` and gate, up in ``gate_up_proj``; a wrapped packed
module computes every slice for every request (its punica kernels loop over slices), so
``{q, v}`` costs one wrapper and ``{v, up}`` two. Module names from the architecture table,
checked against vLLM's own ``packed_modules_mapping`` by ``tests/test_vllm.py``."""

from __future__ import annotations

from fanlora.engines.base import Engine, register
from fanlora.errors import FanLoRAError
from fanlora.modules.architectures import VLLM_MODULES
from fanlora.modules.discovery import ModuleLayout


def units(layout: ModuleLayout) -> dict[str, str]:
    """Kind -> vLLM's runtime module path inside a layer; refused for an architecture the
    table lacks."""
    table = VLLM_MODULES.get(layout.model_type)
    if table is None or set(table) != set(layout.kinds):
        known = ", ".join(VLLM_MODULES)
        raise FanLoRAError(
            f"fanlora does not know vLLM's module names for {layout.model_type!r} "
            f"({layout.model_class}); known architectures: {known}"
        )
    return dict(table)


ENGINE = register(Engine("vllm", "vLLM: packed qkv_proj and gate_up_proj wrappers", units))
