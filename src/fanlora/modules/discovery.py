"""Find a causal LM's repeated decoder layers and the candidate LoRA modules in each.

The layers are the ``nn.ModuleList`` of identical blocks holding the most parameters (so a
vision tower or a list of norms is never chosen). Module kinds come from the table in
:mod:`fanlora.modules.architectures`; an architecture missing there falls back to the
linear modules inside the blocks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from fanlora.errors import FanLoRAError
from fanlora.modules.architectures import kinds_for

try:  # GPT-2 style transposed linear layers
    from transformers.pytorch_utils import Conv1D
except ImportError:  # pragma: no cover - very old transformers
    Conv1D = ()  # type: ignore[assignment]

LINEAR_TYPES: tuple[type, ...] = (nn.Linear, Conv1D) if Conv1D else (nn.Linear,)


@dataclass(frozen=True)
class ModuleLayout:
    """Where the candidate modules of a model live.

    The fully qualified name of kind ``k`` in layer ``l`` is
    ``f"{layers_prefix}.{l}.{kinds[k]}"``, the name ``model.named_modules()`` gives it.
    """

    model_class: str
    model_type: str
    layers_prefix: str
    num_layers: int
    kinds: dict[str, str] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)  # kind -> [in, out]
    from_table: bool = True

    def name(self, layer: int, kind: str) -> str:
        """Fully qualified module name of ``kind`` in ``layer``."""
        return f"{self.layers_prefix}.{layer}.{self.kinds[kind]}"

    def all_names(self) -> list[str]:
        """Every candidate module, layer by layer, kinds in table order."""
        return [self.name(layer, k) for layer in range(self.num_layers) for k in self.kinds]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModuleLayout:
        try:
            return cls(**data)
        except TypeError as exc:
            raise FanLoRAError(f"malformed module layout {data!r}: {exc}") from None


def find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList of same-class blocks with the most parameters, with its name."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(child) for child in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > 0 and (best is None or size > best[0]):
            best = (size, name, module)
    if best is None:
        raise FanLoRAError(
            f"cannot find repeated decoder layers in {type(model).__name__}: no nn.ModuleList "
            "of identical blocks with parameters; add the architecture to "
            "fanlora/modules/architectures.py"
        )
    return best[1], best[2]


def _shape(module: nn.Module) -> list[int]:
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    weight = module.weight  # Conv1D stores [in, out]
    return [int(weight.shape[0]), int(weight.shape[1])]


def _fallback_kinds(block: nn.Module) -> dict[str, str]:
    """Kind names for an unknown architecture: the last path component when unique."""
    paths = [n for n, m in block.named_modules() if n and isinstance(m, LINEAR_TYPES)]
    tails = [p.rsplit(".", 1)[-1] for p in paths]
    return {
        (tail if tails.count(tail) == 1 else path.replace(".", "_")): path
        for path, tail in zip(paths, tails, strict=True)
    }


def discover_layout(model: nn.Module) -> ModuleLayout:
    """The :class:`ModuleLayout` of ``model`` (works on a meta-device model too)."""
    prefix, layers = find_layer_list(model)
    model_type = getattr(getattr(model, "config", None), "model_type", "") or ""
    table = kinds_for(model_type)
    block = layers[0]
    kinds = table if table is not None else _fallback_kinds(block)
    if not kinds:
        raise FanLoRAError(
            f"{type(model).__name__} ({model_type or 'no model_type'}) is not in fanlora's "
            "architecture table and its decoder layers hold no nn.Linear modules"
        )
    named = dict(block.named_modules())
    shapes = {}
    for kind, path in kinds.items():
        module = named.get(path)
        if not isinstance(module, LINEAR_TYPES):
            raise FanLoRAError(
                f"{type(model).__name__}: the architecture table says kind {kind!r} is "
                f"{path!r} inside each layer, but layer 0 has no linear module there"
            )
        shapes[kind] = _shape(module)
    return ModuleLayout(
        model_class=type(model).__name__,
        model_type=model_type,
        layers_prefix=prefix,
        num_layers=len(layers),
        kinds=dict(kinds),
        shapes=shapes,
        from_table=table is not None,
    )


def layout_from_config(config) -> ModuleLayout:
    """Discover the layout from a config alone, building the model on the meta device."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return discover_layout(model)
