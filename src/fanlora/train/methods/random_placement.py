"""The control the paper lacks: as many modules per layer as the setting, kinds at random.

With budget "matched", a draw whose kinds cannot cost within 5% of the setting's at the
same rank trains at the common rank that comes closest (:func:`match_budget`)."""

from __future__ import annotations

from dataclasses import dataclass

from fanlora.select.budget import Match, common_rank, draw_random_kinds, kinds_params
from fanlora.select.setting import FanLoRASetting
from fanlora.train.methods.base import Method, register, require_setting


def random_setting(setting: FanLoRASetting, seed: int) -> FanLoRASetting:
    """Per layer as many modules as ``setting`` keeps there, of kinds drawn uniformly at
    random (seeded), redrawn until the trainable parameters are within 5% of the setting's
    (:func:`fanlora.select.budget.draw_random_kinds`)."""
    layers, match = draw_random_kinds(setting.layout, setting.layers, seed)
    extra = {
        "random_of": setting.extra.get("scores_file", ""),
        "seed": seed,
        "budget_match": match.to_dict(),
    }
    return FanLoRASetting(setting.model, setting.k_max, setting.layout, layers, extra=extra)


@dataclass(frozen=True)
class RandomPlacement(Method):
    def peft_config(self, cfg, layout, total_steps, setting):
        placed = random_setting(require_setting(self, setting, layout), cfg.seed)
        return placed.to_lora_config(r=cfg.rank, alpha=self.alpha(cfg), dropout=cfg.dropout)

    def match_budget(self, setting, target, seed):
        """FanLoRA's rank r1 when the draw's kinds cost within 5% of ``target`` at r1 (the
        same rank, as the draw tries for), else the common rank closest to ``target``."""
        per_rank = kinds_params(setting.layout, random_setting(setting, seed).layers, 1)
        rank = target // setting.params_per_rank()
        match = Match(target, rank * per_rank)
        if not match.within:
            rank, match = common_rank(per_rank, target)
        return {"rank": rank}, match


register(
    RandomPlacement(
        "random",
        "the setting's modules per layer, kinds drawn at random",
        needs_setting=True,
        matched=True,
        revision=1,
    )
)
