"""Scoring's memory plan, made and printed before any weight is loaded.

The fast evaluator caches the input of every decoder layer for M_all and M_null
(:class:`~fanlora.score.evaluator.PrefixCache`)::

    cache = 2 x layers x validation tokens x hidden x bytes per element

in the model's dtype (a 7B LLaMA, 32 layers of 4096, 64 x 256 tokens: 17.2 GB in fp32,
8.6 GB in bf16). The weights take parameters x bytes. The plan keeps the cache on the
device when weights and cache fit there, else in CPU memory, moving one batch's layer
inputs to the device at a time (offload); it refuses, before loading, a model that does
not fit the device without ``--device-map auto``, or a cache that fits nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import psutil
import torch

from fanlora.errors import FanLoRAError

GB = 1e9
# share of free memory a plan may fill: activations of one batch, the allocator's slack
USABLE = 0.85


def cache_bytes(layers: int, tokens: int, hidden: int, element_bytes: int) -> int:
    """2 x layers x tokens x hidden x bytes: every layer's input, for M_all and M_null."""
    return 2 * layers * tokens * hidden * element_bytes


def free_bytes(device: torch.device) -> tuple[int, int]:
    """(free memory on ``device``, available CPU memory), in bytes."""
    host = psutil.virtual_memory().available
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0], host
    return host, host


@dataclass(frozen=True)
class MemoryPlan:
    """What scoring will hold where, and whether the cache lives on the device."""

    device: str
    weights: int
    cache: int  # 0 for the straightforward evaluator
    device_free: int
    host_free: int
    cache_on: str  # "device" or "cpu"
    device_map: str | None

    def store(self, device: torch.device) -> torch.device | None:
        """Where the layer-input cache is held: None (where computed) or the CPU."""
        return torch.device("cpu") if self.cache_on == "cpu" and device.type != "cpu" else None

    def describe(self) -> str:
        where = f"{self.device} memory" if self.cache_on == "device" else "CPU memory (offloaded)"
        spread = f", weights spread by device_map={self.device_map}" if self.device_map else ""
        return (
            f"memory plan on {self.device}: weights {self.weights / GB:.2f} GB{spread}; "
            f"layer-input cache {self.cache / GB:.2f} GB in {where}; free: device "
            f"{self.device_free / GB:.1f} GB, CPU {self.host_free / GB:.1f} GB"
        )


def plan_memory(
    device: torch.device,
    weights: int,
    cache: int,
    device_free: int,
    host_free: int,
    device_map: str | None = None,
) -> MemoryPlan:
    """Where the cache goes, or a FanLoRAError saying what does not fit and what to do."""
    on_cpu = device.type == "cpu"
    room = USABLE * device_free
    if not on_cpu and device_map is None and weights > room:
        raise FanLoRAError(
            f"the model's weights need {weights / GB:.1f} GB and {device} has "
            f"{device_free / GB:.1f} GB free: pass --device-map auto (layers spread over the "
            "GPUs and CPU memory) or --dtype bfloat16"
        )
    if weights + cache <= room:
        cache_on = "device"
    elif not on_cpu and cache <= USABLE * host_free:
        cache_on = "cpu"
    else:
        raise FanLoRAError(
            f"scoring needs {weights / GB:.1f} GB of weights and a {cache / GB:.1f} GB "
            f"layer-input cache; {device} has {device_free / GB:.1f} GB free and the CPU "
            f"{host_free / GB:.1f} GB: lower --val-examples or --max-length, load the "
            "weights in --dtype bfloat16, or use --mode straightforward (no cache)"
        )
    return MemoryPlan(str(device), weights, cache, device_free, host_free, cache_on, device_map)
