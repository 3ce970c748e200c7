"""Steps 1 and 4: LoRA fine-tuning (full LoRA, the FanLoRA setting, and the baselines)."""

from fanlora.train.config import METHODS, TrainConfig
from fanlora.train.methods import build_peft_config, random_setting

__all__ = ["METHODS", "TrainConfig", "build_peft_config", "random_setting"]
