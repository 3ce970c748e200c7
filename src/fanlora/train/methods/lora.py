"""LoRA on every linear module: step 1's full LoRA (rank r0) and the LoRA baseline."""

from __future__ import annotations

import re
from dataclasses import dataclass

from peft import LoraConfig, TaskType

from fanlora.errors import FanLoRAError
from fanlora.select.budget import match_kind_ranks
from fanlora.train.methods.base import Method, register


def kind_patterns(cfg, layout) -> dict:
    """PEFT's ``rank_pattern``/``alpha_pattern`` for ``cfg.rank_pattern`` (kind -> rank),
    keyed by the kind's escaped in-layer path; alpha = 2 x rank unless ``cfg.alpha``."""
    if not cfg.rank_pattern:
        return {}
    unknown = sorted(set(cfg.rank_pattern) - set(layout.kinds))
    if unknown:
        raise FanLoRAError(
            f"rank_pattern names kinds {unknown} this model lacks ({', '.join(layout.kinds)})"
        )
    keys = {k: re.escape(layout.kinds[k]) for k in cfg.rank_pattern}
    ranks = {keys[k]: r for k, r in cfg.rank_pattern.items()}
    alphas = {
        keys[k]: cfg.alpha if cfg.alpha is not None else 2 * r for k, r in cfg.rank_pattern.items()
    }
    return {"rank_pattern": ranks, "alpha_pattern": alphas}


@dataclass(frozen=True)
class AllModulesLoRA(Method):
    """LoRA of rank r on every candidate module of every layer; with ``rank_pattern`` a
    rank per module kind (how a matched budget reaches FanLoRA's within 5%)."""

    def peft_config(self, cfg, layout, total_steps, setting):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.rank,
            lora_alpha=self.alpha(cfg),
            lora_dropout=cfg.dropout,
            target_modules=layout.all_names(),
            **kind_patterns(cfg, layout),
        )

    def match_budget(self, setting, target, seed):
        ranks, match = match_kind_ranks(setting.layout, target)
        return {"rank": min(ranks.values()), "rank_pattern": ranks}, match


register(
    AllModulesLoRA(
        "full-lora", "step 1: LoRA rank r0 on every module", downstream=False, kind_ranks=True
    )
)
register(
    AllModulesLoRA("lora", "LoRA on every module (matched per kind)", kind_ranks=True, matched=True)
)
