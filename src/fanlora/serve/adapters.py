"""Adapters for serving benchmarks: standard PEFT folders with random, non-zero weights.

Decoding speed depends on which modules carry LoRA and at what rank, not on the values, so
the benchmarks need no training: PEFT's own configs (the same ones `fanlora train` builds)
are instantiated and their LoRA matrices filled from a seeded normal distribution (PEFT
initialises B to zero, which would make every tenant equal to the base model).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from peft import get_peft_model

from fanlora.select.setting import FanLoRASetting
from fanlora.train.config import TrainConfig
from fanlora.train.methods import build_peft_config


def method_config(method: str, layout, setting: FanLoRASetting | None, rank: int):
    """The PEFT config `fanlora train --method METHOD --rank RANK [--setting S]` would use
    (the setting is written to a temporary file, as `fanlora train` reads one)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(setting.save(Path(tmp) / "setting.json")) if setting else None
        cfg = TrainConfig(
            method=method,
            rank=rank,
            setting=path,
            adalora_init_rank=rank,
            adalora_target_rank=max(1, rank * 2 // 3),
        )
        return build_peft_config(cfg, layout, total_steps=100, setting=setting)


def write_tenants(base, config, folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` adapters of ``config`` on ``base`` (deep-copied), each with its own seeded
    weights, saved as PEFT folders ``folder/tenant-XX``."""
    model = get_peft_model(copy.deepcopy(base), config)
    params = [p for n, p in model.named_parameters() if "lora_" in n or "ia3_" in n]
    paths = []
    for t in range(count):
        gen = torch.Generator().manual_seed(seed * 100_003 + t)
        with torch.no_grad():
            for p in params:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02 + (1.0 if p.ndim == 1 else 0))
        path = folder / f"tenant-{t:02d}"
        model.save_pretrained(str(path))
        paths.append(path)
    return paths
