"""Serving engines: how each wraps a setting's modules with LoRA, and what that costs.

An engine maps every module kind to the *runtime module* that computes it. Kinds sharing a
runtime module are packed: wrapping it with LoRA computes every kind's slice for every
request, zero-filled where an adapter has none. Per generated token, a setting ``layers``
(the kept kinds of each layer l) costs

    wrapped(l) = { unit(k) : k in layers[l] }
    slices(l)  = sum_{u in wrapped(l)} |{ k : unit(k) = u }|

summed over layers. A new engine is one file in this folder plus :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.utils import registry


@dataclass(frozen=True)
class Engine:
    """A serving engine: ``units(layout)`` gives kind -> runtime module path inside a layer
    (raising :class:`FanLoRAError` for an architecture it does not know)."""

    name: str
    help: str
    units: Callable[[ModuleLayout], dict[str, str]]

    def supports(self, layout: ModuleLayout) -> bool:
        try:
            self.units(layout)
        except FanLoRAError:
            return False
        return True

    def wrapped(self, layout: ModuleLayout, kinds: list[str]) -> list[str]:
        """The runtime modules a layer keeping ``kinds`` wraps, in the table's order."""
        units = self.units(layout)
        return list(dict.fromkeys(units[k] for k in layout.kinds if k in kinds))

    def slices(self, layout: ModuleLayout, wrapped: list[str]) -> int:
        """LoRA slices computed by the runtime modules ``wrapped`` (one per packed kind)."""
        units = list(self.units(layout).values())
        return sum(units.count(u) for u in wrapped)

    def cost(self, layout: ModuleLayout, layers: list[list[str]]) -> dict:
        """Wrapped runtime modules and LoRA slices of a setting, summed over layers."""
        wrapped = [self.wrapped(layout, kinds) for kinds in layers]
        return {
            "wrapped_modules": sum(map(len, wrapped)),
            "slices": sum(self.slices(layout, w) for w in wrapped),
        }


ENGINES: dict[str, Engine] = {}


def register(engine: Engine) -> Engine:
    return registry.add(ENGINES, engine.name, engine, "serving engine")


def get_engine(name: str) -> Engine:
    return registry.lookup(ENGINES, name, "serving engine")


def engine_cost(layout: ModuleLayout, layers: list[list[str]]) -> dict:
    """A setting's cost under every registered engine that knows the architecture."""
    return {e.name: e.cost(layout, layers) for e in ENGINES.values() if e.supports(layout)}


def describe_cost(cost: dict) -> str:
    return "; ".join(
        f"{name} {c['wrapped_modules']} wrapped modules ({c['slices']} slices)"
        for name, c in cost.items()
    )
