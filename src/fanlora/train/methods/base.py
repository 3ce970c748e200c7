"""What a training method is, and the registry of methods.

A method says how it builds its PEFT config from a ``TrainConfig`` (``cfg`` below; not
imported here, since the config validates method names against this registry)
and what else the engine, the pipeline, the report and the serving paths must know of it.
Adding one is one file with a :class:`Method` subclass and a :func:`register` call, imported
by this package's ``__init__`` (or by the user's code before the CLI parses its flags: the
``--method`` choices are read from the registry at parse time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fanlora.errors import FanLoRAError
from fanlora.utils.registry import add, lookup

if TYPE_CHECKING:
    from fanlora.modules.discovery import ModuleLayout
    from fanlora.select.budget import Match
    from fanlora.select.setting import FanLoRASetting


@dataclass(frozen=True)
class Method:
    """A training method. Defaults describe LoRA on fixed modules at one rank."""

    name: str
    help: str = ""
    needs_setting: bool = False  # reads a FanLoRA setting (--setting)
    ranked: bool = True  # has a LoRA rank (the report shows it)
    downstream: bool = True  # a step-4 method (a pipeline's `methods`)
    kind_ranks: bool = False  # accepts ``rank_pattern`` (a rank per module kind)
    matched: bool = False  # with budget "matched", :meth:`match_budget` sets its options
    revision: int = 0  # raised when a change of rule changes what the method trains: it
    # joins a pipeline unit's key when above 0, so units of the earlier rule are not reused
    step_loss_name: str = "step_loss"  # metrics.jsonl key of :meth:`step_loss`
    batched_serving: bool = True  # fanlora's batched multi-tenant path serves it
    vllm_serving: bool = True  # vLLM serves it (LoRA weights on linear modules)

    def peft_config(
        self, cfg, layout: ModuleLayout, total_steps: int, setting: FanLoRASetting | None
    ):
        """The PEFT config to train with; target modules are fully qualified names."""
        raise NotImplementedError

    def alpha(self, cfg) -> int:
        """One rule for every method: the LoRA path's scale alpha / r is 2 (an explicit
        ``cfg.alpha`` wins)."""
        return cfg.alpha if cfg.alpha is not None else 2 * cfg.rank

    def match_budget(
        self, setting: FanLoRASetting, target: int, seed: int
    ) -> tuple[dict, Match] | None:
        """With budget "matched": the TrainConfig options that give ``target`` trainable
        parameters (FanLoRA's, on ``setting`` at rank r1), and how close they come; None
        when the method's budget is its own. ``seed`` is the run's (drawn placements)."""
        return None

    def setup(self, peft_model, cfg) -> None:
        """Called once after ``get_peft_model``, before a checkpoint is restored."""

    def kept_params(self, adapter_config: dict, layout: ModuleLayout) -> int | None:
        """LoRA-equivalent parameters a trained adapter keeps when it keeps fewer than it
        trains (a method that prunes its ranks), from its ``adapter_config.json``; else None."""
        return None

    def step_loss(self, peft_model) -> torch.Tensor | None:
        """A weighted term added to the loss once per optimizer step, logged apart (None)."""
        return None

    def after_step(self, peft_model, step: int) -> None:
        """Called after ``optimizer.step()``, before the gradients are zeroed."""

    def state(self, peft_model) -> dict | None:
        """State outside the weights that a checkpoint must keep to resume exactly."""
        return None

    def restore(self, peft_model, state: dict | None) -> None:
        """Put :meth:`state` back after a resume."""


METHODS: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` known to every command (``fanlora train --method NAME``)."""
    return add(METHODS, method.name, method, "training method")


def get_method(name: str) -> Method:
    return lookup(METHODS, name, "method")


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


def require_setting(method: Method, setting: FanLoRASetting | None, layout: ModuleLayout):
    if setting is None:
        raise FanLoRAError(f"method {method.name!r} needs a setting")
    check_setting_matches(setting, layout)
    return setting
