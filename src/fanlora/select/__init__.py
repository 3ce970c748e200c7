"""Step 3: the FanLoRA setting, built from per-module importance scores."""

from fanlora.select.packing import engine_setting, packed_modules
from fanlora.select.scores import ScoreRecord, parse_scores
from fanlora.select.setting import FanLoRASetting, select_setting, top_modules

__all__ = [
    "FanLoRASetting",
    "ScoreRecord",
    "engine_setting",
    "packed_modules",
    "parse_scores",
    "select_setting",
    "top_modules",
]
