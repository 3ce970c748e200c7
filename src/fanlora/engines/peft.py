"""PEFT (and fanlora's batched path, which wraps the same modules): every kept module is
wrapped on its own, so a setting costs one LoRA product per kept module."""

from __future__ import annotations

from fanlora.engines.base import Engine, register
from fanlora.modules.discovery import ModuleLayout


def units(layout: ModuleLayout) -> dict[str, str]:
    return dict(layout.kinds)


ENGINE = register(Engine("peft", "PEFT and fanlora's batched path: one wrapper per module", units))
