"""Method name -> PEFT config: the one place that maps fanlora's methods onto PEFT."""

from __future__ import annotations

import re

from fanlora.errors import FanLoRAError
from fanlora.modules.discovery import ModuleLayout
from fanlora.select.budget import draw_random_kinds
from fanlora.select.setting import FanLoRASetting
from fanlora.train.config import TrainConfig


def random_setting(setting: FanLoRASetting, seed: int) -> FanLoRASetting:
    """The control the paper lacks: per layer as many modules as ``setting`` keeps there,
    of kinds drawn uniformly at random (seeded), redrawn until the trainable parameters are
    within 5% of the setting's (:func:`fanlora.select.budget.draw_random_kinds`)."""
    layers, match = draw_random_kinds(setting.layout, setting.layers, seed)
    return FanLoRASetting(
        setting.model,
        setting.k_max,
        setting.layout,
        layers,
        extra={
            "random_of": setting.extra.get("scores_file", ""),
            "seed": seed,
            "budget_match": match.to_dict(),
        },
    )


def check_setting_matches(setting: FanLoRASetting, layout: ModuleLayout) -> None:
    """Refuse a setting made for another model shape, naming what differs."""
    names = set(layout.all_names())
    missing = [n for n in setting.target_modules if n not in names]
    if missing or setting.layout.num_layers != layout.num_layers:
        raise FanLoRAError(
            f"the setting names modules this model lacks (e.g. {missing[:3]}); it was made for "
            f"{setting.layout.model_class} with {setting.layout.num_layers} layers, the model is "
            f"{layout.model_class} with {layout.num_layers} layers"
        )


def default_alpha(cfg: TrainConfig) -> int:
    """One rule for every method: the LoRA path's scale alpha / r is 2.

    LoRA, full LoRA, FanLoRA and random scale by ``alpha / rank``, so alpha = 2 x rank.
    PEFT's AdaLoRA scales by ``alpha / ranknum`` where ranknum is its *initial* rank (the
    budget schedule masks singular values but never changes ranknum), so alpha = 2 x
    ``adalora_init_rank``. An explicit ``cfg.alpha`` overrides the rule.
    """
    if cfg.alpha is not None:
        return cfg.alpha
    return 2 * (cfg.adalora_init_rank if cfg.method == "adalora" else cfg.rank)


def kind_patterns(cfg: TrainConfig, layout: ModuleLayout) -> dict:
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


def build_peft_config(
    cfg: TrainConfig, layout: ModuleLayout, total_steps: int, setting: FanLoRASetting | None = None
):
    """The PEFT config of ``cfg.method``; target modules are always fully qualified names."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, TaskType

    alpha = default_alpha(cfg)
    if cfg.method in ("full-lora", "lora"):
        return LoraConfig(
            task_type=TaskType.CAUSAL_LM,
            r=cfg.rank,
            lora_alpha=alpha,
            lora_dropout=cfg.dropout,
            target_modules=layout.all_names(),
            **kind_patterns(cfg, layout),
        )
    if cfg.method in ("fanlora", "random"):
        if setting is None:
            raise FanLoRAError(f"method {cfg.method!r} needs a setting")
        check_setting_matches(setting, layout)
        chosen = setting if cfg.method == "fanlora" else random_setting(setting, cfg.seed)
        return chosen.to_lora_config(r=cfg.rank, alpha=alpha, dropout=cfg.dropout)
    if cfg.method == "adalora":
        # PEFT's budget schedule: warm up tinit steps at init_r, prune to target_r by
        # total_step - tfinal, reallocating every deltaT steps (update_and_allocate).
        tinit, tfinal = int(0.1 * total_steps), int(0.2 * total_steps)
        return AdaLoraConfig(
            task_type=TaskType.CAUSAL_LM,
            init_r=cfg.adalora_init_rank,
            target_r=cfg.adalora_target_rank,
            lora_alpha=alpha,
            lora_dropout=cfg.dropout,
            target_modules=layout.all_names(),
            total_step=max(total_steps, tinit + tfinal + 1),
            tinit=tinit,
            tfinal=tfinal,
            deltaT=max(1, total_steps // 50),
        )
    if cfg.method == "ia3":
        unknown = [k for k in cfg.ia3_kinds if k not in layout.kinds]
        if unknown:
            raise FanLoRAError(
                f"ia3_kinds {unknown} are not kinds of this model ({', '.join(layout.kinds)})"
            )
        # The paper scales the *outputs* (activations) of q, k and up, so no module is a
        # PEFT "feedforward" module (those scale their input instead).
        targets = [layout.name(i, k) for i in range(layout.num_layers) for k in cfg.ia3_kinds]
        return IA3Config(
            task_type=TaskType.CAUSAL_LM, target_modules=targets, feedforward_modules=[]
        )
    raise FanLoRAError(f"unknown method {cfg.method!r}")
