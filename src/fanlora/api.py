"""fanlora from Python (notebooks): the pipeline's steps as functions.

    from fanlora import api

    setting = api.find_setting("smollm2-135m", data="instruct", out="runs/setting")
    model, tokenizer = api.load("smollm2-135m")
    peft_model = api.apply_setting(model, setting, rank=12)    # a PEFT model to fine-tune
    metrics = api.evaluate("smollm2-135m", "boolq", adapter="runs/boolq", limit=100)
    records = api.run(out="runs/demo")                          # the whole pipeline

Each function is a thin layer over the same code as the command line, so results and
folders are the same as ``fanlora run`` / ``fanlora eval`` would make.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from peft import get_peft_model

from fanlora.evaluate.run import EvalConfig
from fanlora.evaluate.run import evaluate as run_eval
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.pipeline.config import load_run_config, run_config_from
from fanlora.pipeline.run import build_units, run_pipeline
from fanlora.pipeline.stages import RunDir, run_units
from fanlora.run_layout import RunLayout
from fanlora.select.setting import FanLoRASetting
from fanlora.train.methods import check_setting_matches


def load(model: str, dtype: str = "float32"):
    """(model, tokenizer) for a preset name, a local folder or a cached Hugging Face id."""
    return load_model(model, dtype)


def find_setting(
    model: str,
    data: str = "instruct",
    out: str | Path = "fanlora-setting",
    k_max: int = 2,
    full_lora: dict | None = None,
    scoring: dict | None = None,
    seed: int = 0,
) -> FanLoRASetting:
    """Steps 1-3 into folder ``out`` (resumable, like ``fanlora run``): full LoRA on ``data``,
    AB-scores, and the setting with at most ``k_max`` modules per layer. ``full_lora`` and
    ``scoring`` take any `fanlora train` / `fanlora score` option."""
    defaults = load_run_config(None)
    sections = {
        **defaults.sections,
        "full_lora": {**defaults.section("full_lora"), "data": data, **(full_lora or {})},
        "scoring": {**defaults.section("scoring"), "data": data, **(scoring or {})},
    }
    cfg = _config({"model": model, "k_max": k_max, "seed": seed}, sections)
    run_dir = RunDir(out)
    run_dir.open(cfg.to_dict())
    units = [u for u in build_units(cfg, run_dir) if u.stage in ("full-lora", "scores", "setting")]
    run_units(run_dir, units)
    return FanLoRASetting.load(RunLayout(run_dir.path).setting)


def _config(top: dict, sections: dict):
    return run_config_from({**top, **sections}, "fanlora.api")


def apply_setting(
    model,
    setting: FanLoRASetting | str | Path,
    rank: int = 12,
    alpha: int | None = None,
    dropout: float = 0.05,
):
    """Fresh LoRA modules of rank ``rank`` on exactly the setting's modules of ``model``
    (a transformers model): ``peft.get_peft_model(model, setting.to_lora_config(...))``."""
    if not isinstance(setting, FanLoRASetting):
        setting = FanLoRASetting.load(setting)
    check_setting_matches(setting, discover_layout(model))
    return get_peft_model(model, setting.to_lora_config(r=rank, alpha=alpha, dropout=dropout))


def evaluate(
    model: str,
    task: str,
    adapter: str | Path | None = None,
    out: str | Path | None = None,
    **options,
) -> dict:
    """``fanlora eval``: the task's metric (appendix A.2); ``options`` are EvalConfig fields.
    Writes metrics.json and predictions.jsonl into ``out`` (default: a temporary folder)."""
    cfg = EvalConfig(model=model, task=task, adapter=str(adapter) if adapter else None, **options)
    return run_eval(cfg, out or tempfile.mkdtemp(prefix="fanlora-eval-"))


def run(
    config: str | Path | None = None,
    out: str | Path = "runs/fanlora",
    start_from: str | None = None,
    **overrides,
) -> dict:
    """``fanlora run``: the whole pipeline from a YAML file (None: the embedded default),
    with top-level keys overridden by keyword; returns every unit's record."""
    return run_pipeline(load_run_config(config, overrides), out, start_from)
