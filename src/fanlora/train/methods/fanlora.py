"""FanLoRA (step 4): fresh LoRA of rank r1 on exactly the setting's modules."""

from __future__ import annotations

from dataclasses import dataclass

from fanlora.train.methods.base import Method, register, require_setting


@dataclass(frozen=True)
class FanLoRA(Method):
    def peft_config(self, cfg, layout, total_steps, setting):
        chosen = require_setting(self, setting, layout)
        return chosen.to_lora_config(r=cfg.rank, alpha=self.alpha(cfg), dropout=cfg.dropout)


register(FanLoRA("fanlora", "LoRA rank r1 on the setting's modules", needs_setting=True))
