"""Training methods, one file each, registered by name (see :mod:`.base`)."""

from fanlora.train.methods import adalora, fanlora, ia3, lora, random_placement  # noqa: F401
from fanlora.train.methods.base import (
    METHODS,
    Method,
    check_setting_matches,
    get_method,
    register,
)
from fanlora.train.methods.random_placement import random_setting


def build_peft_config(cfg, layout, total_steps: int, setting=None):
    """The PEFT config of ``cfg.method`` (:meth:`Method.peft_config`)."""
    return get_method(cfg.method).peft_config(cfg, layout, total_steps, setting)


__all__ = [
    "METHODS",
    "Method",
    "build_peft_config",
    "check_setting_matches",
    "get_method",
    "random_setting",
    "register",
]
