"""Where a stage computes and in which precision: ``--device`` and ``--precision``.

``device``: ``auto`` (the GPU when there is one, else the CPU), ``cpu``, ``cuda`` or
``cuda:N``. ``precision``: the dtype that forward passes autocast to, ``fp32`` (none),
``bf16`` or ``fp16``; ``auto`` is bf16 where the device computes it natively (a GPU with
bf16, a CPU with AVX512-BF16 or AMX) and fp32 elsewhere. Weights keep the dtype they were
loaded in (``--dtype``); losses are always taken in fp32 from the logits
(:mod:`fanlora.models.losses`).

Every check here runs before a stage loads weights or creates a file, so a refused device
or precision leaves nothing behind.
"""

from __future__ import annotations

import functools
import os
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, send_to_device

from fanlora.errors import FanLoRAError

# --precision -> autocast dtype (None: no autocast)
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# --precision -> accelerate's mixed_precision
MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
PRECISION_CHOICES = ("auto", *PRECISIONS)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(spec: str) -> torch.device:
    """``spec`` as a torch device; a clear error for a device this machine lacks."""
    if not DEVICE_PATTERN.fullmatch(spec):
        raise FanLoRAError(f"--device must be auto, cpu, cuda or cuda:N; got {spec!r}")
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise FanLoRAError(
                f"--device {spec}: this machine has no CUDA GPU visible to PyTorch "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                "use --device cpu or auto"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise FanLoRAError(
                f"--device {spec}: this machine has {count} GPU(s), cuda:0 to cuda:{count - 1}"
            )
    return device


@functools.cache
def cpu_info() -> str:
    """/proc/cpuinfo ('' where there is none): torch has no public check of CPU features."""
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return ""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 matmuls natively (AVX512-BF16 or AMX). Without them
    bf16 is emulated, and a bf16-autocast step of the engine took 31x fp32's on an AVX2 host
    (bench/precision.py)."""
    flags = cpu_info().split()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def cpu_machine() -> dict:
    """This CPU's name and whether it computes bf16 natively: what measured speeds depend on."""
    names = re.findall(r"^model name\s*:\s*(.+)$", cpu_info(), flags=re.MULTILINE)
    return {"cpu": names[0].strip() if names else "unknown", "native_bf16": cpu_has_native_bf16()}


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision`` with ``auto`` decided for ``device``; refused when not computable."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    check_precision(precision, device)
    if precision == "bf16" and device.type == "cpu" and not cpu_has_native_bf16():
        warnings.warn(
            "--precision bf16: this CPU has no AVX512-BF16 or AMX, so bf16 is emulated and "
            "much slower than fp32 (31x per training step on an AVX2 host); --precision "
            "auto picks fp32 here",
            stacklevel=2,
        )
    return precision


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot compute in usefully."""
    if precision not in PRECISIONS:
        choices = ", ".join(PRECISION_CHOICES)
        raise FanLoRAError(f"--precision must be one of {choices}; got {precision!r}")
    if precision == "fp16" and device.type == "cpu":
        raise FanLoRAError(
            "--precision fp16 is refused on the CPU: CPU autocast has no fp16 loss scaling "
            "and most CPUs compute fp16 slower than fp32; use --precision bf16 (this "
            "machine's AVX512-BF16 runs it natively) or fp32"
        )
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise FanLoRAError(
            f"--precision bf16: {torch.cuda.get_device_name(device)} does not support bf16 "
            "(it needs an Ampere or newer GPU); use --precision fp16 or fp32"
        )


@dataclass(frozen=True)
class Runtime:
    """A resolved device and precision, and the two things stages do with them."""

    device: torch.device
    precision: str

    @classmethod
    def of(cls, device: str = "auto", precision: str = "fp32") -> Runtime:
        resolved = resolve_device(device)
        return cls(resolved, resolve_precision(precision, resolved))

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        return PRECISIONS[self.precision]

    def autocast(self):
        """The autocast context of a forward pass (nothing for fp32)."""
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def place(self, data):
        """``data`` (a tensor, or dicts and lists of them) on this device."""
        return send_to_device(data, self.device)

    def describe(self, precision: bool = True) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "CPU"
        return f"{self.device} ({name})" + (f", {self.precision}" if precision else "")


@dataclass
class DeviceOptions:
    """The ``--device`` and ``--precision`` fields every stage's config shares."""

    device: str = field(
        default="auto",
        metadata={"help": "auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N"},
    )
    precision: str = field(
        default="fp32",
        metadata={
            "help": "autocast dtype of forward passes (losses stay fp32); auto: bf16 where "
            "the device computes it natively, else fp32; fp16 needs a GPU",
            "choices": PRECISION_CHOICES,
        },
    )

    def runtime(self) -> Runtime:
        return Runtime.of(self.device, self.precision)


def distributed() -> bool:
    """Whether this process is one rank of several (torchrun or accelerate launch)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def is_main_rank() -> bool:
    """Whether this process is the main one (rank 0, or the only one)."""
    return int(os.environ.get("RANK", "0")) == 0


def make_accelerator(runtime: Runtime) -> Accelerator:
    """An Accelerator on ``runtime``'s device with its mixed precision.

    accelerate keeps one state per process and refuses an Accelerator whose device or mixed
    precision differs from the first one's. One process may train several units with
    different settings (a test session, a notebook): a single-process state is reset first,
    as accelerate's own tests do; a distributed one is never (every rank keeps its device).
    """
    _settle(runtime)
    mixed = MIXED_PRECISION[runtime.precision]
    _reset_if_changed(runtime.device.type == "cpu", mixed)
    # accelerate picks gloo for CPU ranks only when told cpu=True; without it a machine with
    # no GPU silently runs each torchrun rank alone
    return Accelerator(mixed_precision=mixed, cpu=runtime.device.type == "cpu")


def end_processes() -> None:
    """Destroy the process group of a multi-process run (no-op for one process).

    Called once a command has finished without error, while the interpreter is still whole:
    left to interpreter exit, gloo's worker threads are torn down in no fixed order and a
    rank can abort after its work is done ("terminate called without an active
    exception", pytorch/pytorch#190489), which fails the whole torchrun launch. Not called
    after an error: a rank still inside a collective would make the destroy hang
    (pytorch/torchtitan#1342)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def check_distributed(accelerator) -> None:
    """Refuse a launch fanlora's engine cannot serve yet: FSDP or DeepSpeed shard the
    weights, and the engine saves adapters and checkpoints from the unwrapped PEFT model
    (shards, not the gathered weights). DDP and one process are supported."""
    kind = accelerator.distributed_type
    if kind in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        raise FanLoRAError(
            f"accelerate launched this run with {kind.value}: fanlora's training engine "
            "supports one process or DDP (torchrun, or accelerate launch without an FSDP or "
            "DeepSpeed config) for now"
        )


def process_state(runtime: Runtime) -> tuple[PartialState, Runtime]:
    """accelerate's process state (rank, world size, barriers) for a stage that does not
    train, and the runtime on this process's device (each rank's own GPU)."""
    _settle(runtime)
    _reset_if_changed(runtime.device.type == "cpu", None)
    state = PartialState(cpu=runtime.device.type == "cpu")
    return state, Runtime(state.device, runtime.precision)


def _settle(runtime: Runtime) -> None:
    if distributed() and runtime.device.index is not None:
        raise FanLoRAError(
            f"--device {runtime.device}: with several processes each one takes the GPU of "
            "its LOCAL_RANK; pass --device cuda or auto"
        )
    if runtime.device.type == "cuda" and runtime.device.index is not None:
        torch.cuda.set_device(runtime.device)  # accelerate's single-process "cuda" is this one


def _reset_if_changed(cpu: bool, mixed: str | None) -> None:
    """Reset accelerate's single-process state when it holds another device or precision."""
    if distributed() or not PartialState._shared_state:
        return
    changed = (PartialState().device.type == "cpu") != cpu
    if mixed is not None and AcceleratorState._shared_state:
        changed = changed or AcceleratorState().mixed_precision != mixed
    if changed:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
