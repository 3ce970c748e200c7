"""Serving engines, one file each, registered by name (see :mod:`.base`)."""

from fanlora.engines import peft, vllm  # noqa: F401
from fanlora.engines.base import (
    ENGINES,
    Engine,
    describe_cost,
    engine_cost,
    get_engine,
    register,
)

__all__ = ["ENGINES", "Engine", "describe_cost", "engine_cost", "get_engine", "register"]
