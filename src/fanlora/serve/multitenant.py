"""Mixed-tenant batches: each request names its own LoRA adapter, one batched computation.

PEFT serves a mixed batch with ``generate(..., adapter_names=[...])`` by looping, at every
wrapped module, over the distinct adapters of the batch (a sub-batch gather, two small
matmuls and a scatter each). Here adapters are registered by name from standard PEFT
folders and, when a batch is set, each module gets the requests' own matrices stacked:

    A_sel[i] = A_{a(i)}^T   [batch, d_in, r_max]    (zeros where request i has none)
    B_sel[i] = s_{a(i)} B_{a(i)}^T  [batch, r_max, d_out]   (s = alpha / r, or / sqrt(r))
    y = W x + bmm(bmm(x, A_sel), B_sel)

Ranks differ? A and B are zero-padded to the batch's largest rank at that module, which
adds exact zeros. Placements differ? A request whose adapter skips a module gets zero
rows there. No adapter in the batch targets a module? It runs as the plain base module.
The gathered matrices are built once per batch and reused at every decoding step.

Written by hand because no maintained library does this on CPU for standard PEFT folders
(vLLM's punica kernels and S-LoRA need a GPU and their own server).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from fanlora.errors import FanLoRAError
from fanlora.evaluate.generate import left_pad
from fanlora.models.adapters import check_adapter_folder

UNSUPPORTED_FLAGS = ("use_dora", "lora_bias", "use_qalora")


@dataclass
class TenantAdapter:
    """A registered adapter: per module, A^T [d_in, r] and the scaled B^T [r, d_out]."""

    name: str
    folder: str
    weights: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(repr=False)

    @property
    def num_params(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.weights.values())


def _check_config(config: dict, folder: Path) -> None:
    kind = config.get("peft_type")
    if kind != "LORA":
        raise FanLoRAError(
            f"{folder}: the batched path serves plain LoRA adapters; this one "
            f"is {kind} (serve it through PEFT instead)"
        )
    for flag in UNSUPPORTED_FLAGS:
        if config.get(flag):
            raise FanLoRAError(
                f"{folder}: {flag} adapters are not supported by the batched "
                "path (serve them through PEFT instead)"
            )
    if config.get("bias", "none") != "none" or config.get("modules_to_save"):
        raise FanLoRAError(
            f"{folder}: adapters that train biases or whole modules "
            "(bias, modules_to_save) are not supported by the batched path"
        )


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank/alpha pattern lookup: a key matches a module name it ends with."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    """(d_in, d_out) of a Linear or GPT-2 Conv1D, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return module.weight.shape[0], module.weight.shape[1]
    return None


def read_adapter(name: str, folder: str | Path, modules: dict[str, nn.Module]) -> TenantAdapter:
    """Load and check a PEFT LoRA folder against the base model's ``modules``; nothing is
    changed when it is refused."""
    folder = check_adapter_folder(folder)
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except json.JSONDecodeError as exc:
        raise FanLoRAError(f"{folder}/adapter_config.json is not valid JSON: {exc}") from None
    _check_config(config, folder)
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        match = re.fullmatch(r"base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if match is None:
            raise FanLoRAError(f"{folder}: unexpected tensor {key!r} in a LoRA adapter")
        pairs.setdefault(match.group(1), {})[match.group(2)] = tensor
    weights = {}
    for module, ab in sorted(pairs.items()):
        weights[module] = _module_weights(folder, config, module, ab, modules)
    if not weights:
        raise FanLoRAError(f"{folder}: the adapter holds no LoRA weights")
    return TenantAdapter(name, str(folder), weights)


def _module_weights(folder, config, module, ab, modules):
    if set(ab) != {"A", "B"}:
        raise FanLoRAError(f"{folder}: module {module} lacks lora_{'A' if 'A' not in ab else 'B'}")
    shape = _linear_shape(modules[module]) if module in modules else None
    a, b = ab["A"].float(), ab["B"].float()
    rank = a.shape[0]
    if shape is None or a.shape != (rank, shape[0]) or b.shape != (shape[1], rank):
        raise FanLoRAError(
            f"{folder} does not fit this base model at {module}: the adapter has A "
            f"{tuple(a.shape)} and B {tuple(b.shape)}, the model "
            + (f"a module of (in, out) = {shape}" if shape else "no such linear module")
        )
    alpha = _pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8))
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    return a.t().contiguous(), (b * scale).t().contiguous()


class TenantLinear(nn.Module):
    """A base linear module plus the current batch's per-request LoRA (see module doc)."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        self.a: torch.Tensor | None = None  # [batch, d_in, r]
        self.b: torch.Tensor | None = None  # [batch, r, d_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.a is None:
            return y
        flat = x.reshape(x.shape[0], -1, x.shape[-1]).to(self.a.dtype)
        delta = torch.bmm(torch.bmm(flat, self.a), self.b)
        return y + delta.reshape(y.shape).to(y.dtype)


class TenantServer:
    """One base model, many registered LoRA adapters, batches that mix them.

    >>> server = TenantServer(model)
    >>> server.register("acme", "adapters/acme")
    >>> out = server.generate(input_ids, attention_mask, ["acme", None], max_new_tokens=32)
    """

    def __init__(self, model: nn.Module):
        self.model = model.eval()
        self.adapters: dict[str, TenantAdapter] = {}
        self.refused: dict[str, str] = {}  # name -> why its registration failed
        self.wrapped: dict[str, TenantLinear] = {}
        self.linears = {n: m for n, m in model.named_modules() if _linear_shape(m) is not None}

    def register(self, name: str, folder: str | Path) -> TenantAdapter:
        """Read ``folder`` (a standard PEFT LoRA folder) as adapter ``name``; a refused
        folder leaves the server as it was."""
        if name in self.adapters:
            raise FanLoRAError(f"an adapter named {name!r} is already registered")
        try:
            adapter = read_adapter(name, folder, self.linears)
        except FanLoRAError as exc:
            self.refused[name] = str(exc)
            raise
        self.refused.pop(name, None)
        dtype = next(self.model.parameters()).dtype
        adapter.weights = {m: (a.to(dtype), b.to(dtype)) for m, (a, b) in adapter.weights.items()}
        for module in adapter.weights:
            if module not in self.wrapped:
                self._wrap(module)
        self.adapters[name] = adapter
        return adapter

    def _wrap(self, module: str) -> None:
        parent_name, _, child = module.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        wrapper = TenantLinear(getattr(parent, child))
        setattr(parent, child, wrapper)
        self.wrapped[module] = wrapper

    def problem(self, name: str | None) -> str | None:
        """Why a request naming ``name`` cannot be served, or None."""
        if name is None or name in self.adapters:
            return None
        if name in self.refused:
            return f"adapter {name!r} was refused at registration: {self.refused[name]}"
        known = ", ".join(sorted(self.adapters)) or "none"
        return f"adapter {name!r} is not registered (registered: {known})"

    def check_names(self, names: Sequence[str | None]) -> None:
        for i, name in enumerate(names):
            if (why := self.problem(name)) is not None:
                raise FanLoRAError(f"request {i}: {why}")

    @contextmanager
    def batch(self, names: Sequence[str | None], repeat: int = 1):
        """Within the block, row i of every forward pass uses adapter ``names[i // repeat]``
        (``repeat``: beams per request) or none."""
        self.check_names(names)
        rows = [n for n in names for _ in range(repeat)]
        try:
            for module, wrapper in self.wrapped.items():
                wrapper.a, wrapper.b = self._gather(module, rows)
            yield self
        finally:
            for wrapper in self.wrapped.values():
                wrapper.a = wrapper.b = None

    def _gather(self, module: str, rows: list[str | None]):
        """The batch's stacked, zero-padded A^T and B^T at ``module`` (None: nobody uses it)."""
        mats = [self.adapters[n].weights.get(module) if n else None for n in rows]
        present = [m for m in mats if m is not None]
        if not present:
            return None, None
        d_in, d_out = present[0][0].shape[0], present[0][1].shape[1]
        r_max = max(a.shape[1] for a, _ in present)
        dtype = present[0][0].dtype
        a_sel = torch.zeros(len(rows), d_in, r_max, dtype=dtype)
        b_sel = torch.zeros(len(rows), r_max, d_out, dtype=dtype)
        for i, m in enumerate(mats):
            if m is not None:
                a_sel[i, :, : m[0].shape[1]] = m[0]
                b_sel[i, : m[1].shape[0]] = m[1]
        device = next(self.model.parameters()).device
        return a_sel.to(device), b_sel.to(device)

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, names: Sequence[str | None]):
        """Logits of a batch whose row i uses adapter ``names[i]``."""
        with self.batch(names):
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False
            ).logits

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, names: Sequence[str | None], **kwargs):
        """``model.generate`` with row i under adapter ``names[i]`` (beams included)."""
        with self.batch(names, repeat=kwargs.get("num_beams", 1)):
            return self.model.generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    @torch.no_grad()
    def serve(
        self, prompts: list[list[int]], names: Sequence[str | None], pad_id: int, **kwargs
    ) -> list[dict]:
        """Generate for each request (prompt token ids, adapter name); a request that cannot
        be served gets ``{"error": why}`` and the others are served together as usual:
        ``{"tokens": new token ids}``."""
        results: list[dict] = [{"error": why} if (why := self.problem(n)) else {} for n in names]
        good = [i for i, r in enumerate(results) if not r]
        if good:
            batch = left_pad([prompts[i] for i in good], pad_id)
            out = self.generate(
                batch["input_ids"],
                batch["attention_mask"],
                [names[i] for i in good],
                pad_token_id=pad_id,
                **kwargs,
            )
            width = batch["input_ids"].shape[1]
            for row, i in enumerate(good):
                results[i] = {"tokens": out[row, width:].tolist()}
        return results
