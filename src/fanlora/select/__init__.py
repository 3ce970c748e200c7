"""Step 3: the FanLoRA setting, built from per-module importance scores."""

from fanlora.select.scores import ScoreRecord, parse_scores
from fanlora.select.setting import FanLoRASetting, select_setting, top_modules

__all__ = ["FanLoRASetting", "ScoreRecord", "parse_scores", "select_setting", "top_modules"]
