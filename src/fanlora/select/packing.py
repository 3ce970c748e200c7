"""An engine-aware setting: the best scores under a budget of wrapped runtime modules.

In an engine that packs kinds (vLLM: q, k, v in ``qkv_proj``; gate, up in ``gate_up_proj``)
a layer pays per wrapped runtime module, not per kept kind. Per layer l, with ``units``
mapping each kind to its runtime module, keep

    K_l = argmax_K sum_{m in K} V_{m,l}
          s.t. |K| <= K_max,  V_{m,l} >= 0 for m in K,  |{units[m] : m in K}| <= B

(B = ``budget``); ties go to fewer slices, then to the table's kind order. With one unit
per kind and B >= K_max this is the paper's setting (:func:`~.setting.top_modules`), but
for a score of exactly 0, which the paper keeps and this leaves out (no gain, a cost).
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import combinations

from fanlora.engines import engine_cost, get_engine
from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.select.scores import ScoreRecord
from fanlora.select.setting import FanLoRASetting, top_modules


def best_under_budget(
    scores: dict[str, float], order: list[str], units: dict[str, str], k_max: int, budget: int
) -> list[str]:
    """K_l for one layer's ``scores`` (kind -> V); see the module docstring (pure)."""
    rank = {kind: i for i, kind in enumerate(order)}
    groups = list(dict.fromkeys(units[k] for k in order))
    size = {g: sum(units[k] == g for k in order) for g in groups}
    best: tuple = ()
    for count in range(1, min(budget, len(groups)) + 1):
        for chosen in combinations(groups, count):
            kinds = [k for k in order if units[k] in chosen and scores.get(k, -1.0) >= 0]
            kept = sorted(kinds, key=lambda k: (-scores[k], rank[k]))[:k_max]
            slices = sum(size[g] for g in dict.fromkeys(units[k] for k in kept))
            # larger total score, then fewer slices, then earlier kinds in the table
            key = (sum(scores[k] for k in kept), -slices, sorted(-rank[k] for k in kept)[::-1])
            if not best or key > best[0]:
                best = (key, kept)
    return sorted(best[1], key=rank.__getitem__) if best else []


def packed_modules(
    records: Iterable[ScoreRecord],
    layout: ModuleLayout,
    k_max: int,
    units: dict[str, str],
    budget: int,
) -> list[list[str]]:
    """Kept kinds per layer under at most ``budget`` wrapped runtime modules (pure)."""
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise FanLoRAError(f"the packed-module budget must be an integer >= 1, got {budget!r}")
    if isinstance(k_max, bool) or not isinstance(k_max, int) or k_max < 1:
        raise FanLoRAError(f"K_max must be an integer >= 1, got {k_max!r}")
    by_layer: list[dict[str, float]] = [{} for _ in range(layout.num_layers)]
    for record in records:
        by_layer[record.layer][record.module] = record.score
    order = list(layout.kinds)
    return [best_under_budget(s, order, units, k_max, budget) for s in by_layer]


def engine_setting(
    records: list[ScoreRecord],
    layout: ModuleLayout,
    k_max: int,
    model: str = "",
    engine: str | None = None,
    budget: int | None = None,
) -> FanLoRASetting:
    """The paper's setting, or with ``engine`` the best scores under ``budget`` (default 1)
    of that engine's wrapped runtime modules per layer; either records its cost per engine."""
    if engine is None:
        if budget is not None:
            raise FanLoRAError("a packed-module budget needs an engine (whose modules it counts)")
        setting = FanLoRASetting(model, k_max, layout, top_modules(records, layout, k_max))
    else:
        budget = 1 if budget is None else budget
        units = get_engine(engine).units(layout)  # an unknown architecture is refused here
        layers = packed_modules(records, layout, k_max, units, budget)
        setting = FanLoRASetting(model, k_max, layout, layers)
        setting.extra |= {"engine": engine, "packed_budget": budget}
    setting.extra["cost"] = engine_cost(layout, setting.layers)
    return setting
