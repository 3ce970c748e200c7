"""Training checkpoints that survive a kill at any moment.

A checkpoint is a folder ``checkpoints/step-N`` with the trainable weights (safetensors),
optimizer and scheduler state, the method's own state (:meth:`Method.state`; AdaLoRA: the
rank allocator's running importance and the rank pattern) and ``state.json``. There is no
RNG state: the engine reseeds torch from (seed, step, rank) at every step, so a resumed run
draws the same dropout masks. It is written under a temporary name and renamed when
complete; ``latest`` names the newest complete one and is replaced atomically, so a run
killed mid-save resumes from the previous checkpoint.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from fanlora.utils.io import atomic_dir, atomic_write_text

KEEP = 2  # complete checkpoints kept on disk


@dataclass
class TrainState:
    """Where a run is: enough to continue it exactly."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    tokens: int = 0
    best_loss: float = math.inf
    best_step: int = -1
    bad_evals: int = 0
    stopped_early: bool = False
    # where each sitting started and what it computed on: {from_step, device, precision}
    sittings: list[dict] = field(default_factory=list)


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: p.detach().cpu().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def save_checkpoint(
    root: Path, model, optimizer, scheduler, state: TrainState, method_state: dict | None = None
) -> Path:
    """Write ``root/step-N`` atomically, point ``root/latest`` at it, prune old ones."""
    final = root / f"step-{state.step}"
    with atomic_dir(final) as tmp:
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "method": method_state,
            },
            tmp / "optim.pt",
        )
        (tmp / "state.json").write_text(json.dumps(asdict(state)))
    atomic_write_text(root / "latest", final.name + "\n")
    for old in sorted(root.glob("step-*"), key=lambda p: int(p.name[5:]))[:-KEEP]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: Path) -> Path | None:
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    folder = root / pointer.read_text().strip()
    return folder if (folder / "state.json").is_file() else None


def checkpoint_step(root: Path) -> int:
    """The step a run resumes from: its newest complete checkpoint's (0 when none)."""
    folder = latest_checkpoint(root)
    return json.loads((folder / "state.json").read_text())["step"] if folder else 0


def load_checkpoint(folder: Path, model, optimizer, scheduler) -> tuple[TrainState, dict | None]:
    """Restore weights, optimizer and scheduler from ``folder``; return its state and the
    method's own state (None when it has none)."""
    weights = load_file(folder / "trainable.safetensors")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    optim = torch.load(folder / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    state = TrainState(**json.loads((folder / "state.json").read_text()))
    return state, optim.get("method")
