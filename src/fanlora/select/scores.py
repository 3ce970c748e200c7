"""The scores file shared by ``score``, ``select`` and ``compare``.

A JSON object whose ``scores`` is a list of records with at least ``layer`` (int),
``module`` (kind name) and ``score`` (float); other fields are allowed and kept. Optional
top-level fields: ``model`` (the ``--model`` it was computed on) and ``layout`` (a
:class:`~fanlora.modules.discovery.ModuleLayout` as a dict).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout


@dataclass(frozen=True)
class ScoreRecord:
    """Importance V of one LoRA module: kind ``module`` in decoder layer ``layer``."""

    layer: int
    module: str
    score: float


def _record(index: int, raw: object, layout: ModuleLayout) -> ScoreRecord:
    where = f"scores[{index}] = {raw!r}"
    if not isinstance(raw, dict):
        raise FanLoRAError(f"{where}: a record must be an object with layer, module, score")
    missing = [key for key in ("layer", "module", "score") if key not in raw]
    if missing:
        raise FanLoRAError(f"{where}: missing {', '.join(missing)}")
    layer, module, score = raw["layer"], raw["module"], raw["score"]
    if isinstance(layer, bool) or not isinstance(layer, int):
        raise FanLoRAError(f"{where}: layer must be an integer")
    if not 0 <= layer < layout.num_layers:
        raise FanLoRAError(
            f"{where}: layer {layer} is out of range; "
            f"the model has layers 0..{layout.num_layers - 1}"
        )
    if module not in layout.kinds:
        raise FanLoRAError(
            f"{where}: unknown module kind {module!r}; this model has {', '.join(layout.kinds)}"
        )
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(score):
        raise FanLoRAError(f"{where}: score must be a finite number, got {score!r}")
    return ScoreRecord(layer=layer, module=module, score=float(score))


def parse_scores(doc: object, layout: ModuleLayout) -> list[ScoreRecord]:
    """Validate a scores document against ``layout``; raise naming the offending record."""
    if not isinstance(doc, dict) or not isinstance(doc.get("scores"), list):
        raise FanLoRAError("a scores file must be a JSON object with a list under 'scores'")
    if not doc["scores"]:
        raise FanLoRAError("the scores file holds no records ('scores' is an empty list)")
    records, seen = [], {}
    for index, raw in enumerate(doc["scores"]):
        record = _record(index, raw, layout)
        key = (record.layer, record.module)
        if key in seen:
            raise FanLoRAError(
                f"scores[{index}]: duplicate record for layer {record.layer} module "
                f"{record.module!r} (first at scores[{seen[key]}])"
            )
        seen[key] = index
        records.append(record)
    return records
