"""Step 0: which linear modules of which layers can carry a LoRA module."""

from fanlora.modules.architectures import ARCHITECTURES, kinds_for
from fanlora.modules.discovery import ModuleLayout, discover_layout

__all__ = ["ARCHITECTURES", "ModuleLayout", "discover_layout", "kinds_for"]
