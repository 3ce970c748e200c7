"""The FanLoRA setting (paper section 3.2, "Obtaining the FanLoRA setting").

Per layer l keep the kinds m with the K_max highest importance scores V_{m,l}, dropping any
with V_{m,l} < 0, so a layer may keep fewer than K_max modules, even none. Ties break by the
architecture table's kind order (q before k before v ...), so the result is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from peft import LoraConfig, TaskType

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.select.scores import ScoreRecord
from fanlora.utils.io import atomic_write_json, read_json

SETTING_FORMAT = "fanlora-setting"
SETTING_VERSION = 1


def top_modules(
    records: Iterable[ScoreRecord], layout: ModuleLayout, k_max: int
) -> list[list[str]]:
    """Kept kinds per layer: top ``k_max`` by score, never a negative one (pure)."""
    if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 1:
        raise FanLoRAError(f"K_max must be an integer >= 1, got {k_max!r}")
    order = {kind: i for i, kind in enumerate(layout.kinds)}
    by_layer: list[list[ScoreRecord]] = [[] for _ in range(layout.num_layers)]
    for record in records:
        by_layer[record.layer].append(record)
    kept = []
    for layer_records in by_layer:
        ranked = sorted(layer_records, key=lambda r: (-r.score, order[r.module]))
        chosen = [r.module for r in ranked if r.score >= 0][:k_max]
        kept.append(sorted(chosen, key=order.__getitem__))
    return kept


@dataclass
class FanLoRASetting:
    """Per layer, the module kinds that carry a LoRA module."""

    model: str
    k_max: int
    layout: ModuleLayout
    layers: list[list[str]]
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.layers) != self.layout.num_layers:
            raise FanLoRAError(
                f"setting lists {len(self.layers)} layers "
                f"but the model has {self.layout.num_layers}"
            )
        for layer, kinds in enumerate(self.layers):
            unknown = [k for k in kinds if k not in self.layout.kinds]
            if unknown:
                raise FanLoRAError(f"setting layer {layer}: unknown module kinds {unknown}")

    @property
    def target_modules(self) -> list[str]:
        """Fully qualified names of the kept modules, layer by layer."""
        return [self.layout.name(i, k) for i, kinds in enumerate(self.layers) for k in kinds]

    @property
    def num_modules(self) -> int:
        return sum(len(kinds) for kinds in self.layers)

    def kind_counts(self) -> dict[str, int]:
        """How many layers keep each kind (the paper's figure 1)."""
        return {k: sum(k in kinds for kinds in self.layers) for k in self.layout.kinds}

    def params_per_rank(self) -> int:
        """LoRA parameters per unit of rank: sum over kept modules of (d_in + d_out)."""
        return sum(sum(self.layout.shapes[k]) for kinds in self.layers for k in kinds)

    def matched_rank(self, r: int) -> int:
        """The rank of LoRA on *every* module whose parameter count is closest to this
        setting's at rank ``r``: round(r * P_setting / P_all), at least 1."""
        all_kinds = self.layout.num_layers * sum(sum(v) for v in self.layout.shapes.values())
        return max(1, round(r * self.params_per_rank() / all_kinds))

    def to_lora_config(self, r: int = 12, alpha: int | None = None, dropout: float = 0.05, **kw):
        """A PEFT ``LoraConfig`` wrapping exactly the kept modules.

        ``target_modules`` holds fully qualified names, never ``layers_to_transform``: PEFT
        matches a name when it equals or ends with ``"." + target``, so ``model.layers.1.x``
        can never match ``model.layers.11.x``. ``alpha`` defaults to ``2 * r``.
        """
        if self.num_modules == 0:
            raise FanLoRAError("the setting keeps no module (every score was negative)")
        if r < 1:
            raise FanLoRAError(f"LoRA rank must be >= 1, got {r}")
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=r,
            lora_alpha=2 * r if alpha is None else alpha,
            lora_dropout=dropout,
            target_modules=self.target_modules,
            **kw,
        )

    def to_dict(self) -> dict:
        return {
            "format": SETTING_FORMAT,
            "version": SETTING_VERSION,
            "model": self.model,
            "k_max": self.k_max,
            "num_modules": self.num_modules,
            "layers": [{"layer": i, "modules": kinds} for i, kinds in enumerate(self.layers)],
            "target_modules": self.target_modules,
            "layout": self.layout.to_dict(),
            **self.extra,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "setting") -> FanLoRASetting:
        if not isinstance(data, dict) or data.get("format") != SETTING_FORMAT:
            raise FanLoRAError(f"{source} is not a fanlora setting (format != {SETTING_FORMAT!r})")
        try:
            layout = ModuleLayout.from_dict(data["layout"])
            layers = [list(entry["modules"]) for entry in data["layers"]]
            known = {
                "format",
                "version",
                "model",
                "k_max",
                "num_modules",
                "layers",
                "target_modules",
                "layout",
            }
            setting = cls(
                data["model"],
                int(data["k_max"]),
                layout,
                layers,
                extra={k: v for k, v in data.items() if k not in known},
            )
        except (KeyError, TypeError) as exc:
            raise FanLoRAError(f"{source} is malformed: missing or bad field {exc}") from None
        if data.get("target_modules") != setting.target_modules:
            raise FanLoRAError(f"{source}: target_modules disagree with the per-layer lists")
        return setting

    def save(self, path: str | Path) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> FanLoRASetting:
        return cls.from_dict(read_json(path, "setting file"), source=str(path))


def select_setting(
    records: Iterable[ScoreRecord], layout: ModuleLayout, k_max: int, model: str = ""
) -> FanLoRASetting:
    """The FanLoRA setting for ``records`` (see :func:`top_modules`)."""
    return FanLoRASetting(model, k_max, layout, top_modules(records, layout, k_max))
