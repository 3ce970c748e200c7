"""The plan of a grid before it runs: the units still to compute and what they will cost.

Every point's units are built (as the pipeline would) with their keys; a unit already done
in its run folder or in a ``reuse`` folder, or shared with an earlier point (same key), is
not counted, unless its weights were pruned and a unit that must run reads them (the
pipeline then trains it again). The rest are estimated from measured unit costs on this
machine (``configs/measured/unit-costs.yaml``, written by ``python bench/unit_costs.py``):

- training (steps 1 and 4): examples x mean tokens / training tokens per second, plus the dev
  evaluations: (steps / eval_every + 1) x eval_examples x mean tokens / forward tokens per s,
  counting only the steps after the checkpoint a stopped unit resumes from;
- scoring: exact AB (fast, or racing that falls back) modules x validation examples x the
  measured seconds per module-example; first order and sensitivity: validation examples x
  their seconds per example; refined first order adds exact AB's cost for the share of
  modules it recomputes (:data:`REFINED_SHARE`); Shapley: not estimated (shown as unknown);
- evaluation: test rows x the task's measured seconds per row;
- decoding: its measured seconds; setting and report: nothing.

The costs are measured in one precision (``precision`` in the file: bf16 where the CPU
computes it); a unit whose own precision (``auto`` resolved for this machine) has a measured
section in the file (``fp32: {eval_row_s: ...}``) is priced from that section (evaluation in
fp32 takes 1.1-1.4x bf16's seconds a row on an AVX512-BF16 CPU,
``configs/measured/unit-costs.yaml``). The file names the machine it was measured on
(``machine``); :func:`machine_note` says when this one differs.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, fields
from pathlib import Path

from fanlora.config import load_yaml
from fanlora.data.registry import split_size
from fanlora.errors import FanLoRAError
from fanlora.pipeline.run import build_units
from fanlora.pipeline.stages import RunDir, Unit, assign_keys, revived
from fanlora.train.checkpoint import checkpoint_step
from fanlora.train.config import TrainConfig
from fanlora.train.outputs import RunFolder
from fanlora.utils.devices import cpu_machine, resolve_device, resolve_precision

COSTS_FILE = Path(__file__).resolve().parents[3] / "configs" / "measured" / "unit-costs.yaml"
SCORE_METHODS_PER_EXAMPLE = {"first-order": "first_order", "sensitivity": "sensitivity"}
# Refined first order recomputes exactly the modules near a layer's K_max-th place or 0:
# 55-59 of 210 on grid 1's three 400-step adapters (results/README.md), so about 0.28.
REFINED_SHARE = 0.28


@dataclass
class PlannedUnit:
    point: str
    unit: Unit
    seconds: float | None  # None: no estimate


def load_costs(path: str | Path | None = None) -> dict:
    return load_yaml(path or COSTS_FILE)


def train_seconds(params: dict, costs: dict, from_step: int = 0) -> float:
    # the schedule does not depend on the method: read it as full LoRA's (no setting needed);
    # a unit's key may hold more than TrainConfig takes (budget, method_revision)
    schedule = {f.name for f in fields(TrainConfig)} - {"method", "setting", "rank_pattern"}
    cfg = TrainConfig(**{k: v for k, v in params.items() if k in schedule}, method="full-lora")
    tokens = costs["mean_tokens"].get(cfg.data, costs["mean_tokens"]["default"])
    tokens = min(tokens, cfg.max_length)
    rows = split_size(cfg.data, "train")
    if cfg.max_train_examples:
        rows = min(rows, cfg.max_train_examples)
    batch = cfg.effective_batch_size(rows)
    steps = math.ceil(cfg.max_epochs * math.ceil(rows / batch))
    if cfg.max_steps is not None:
        steps = min(steps, cfg.max_steps)
    steps = max(steps - from_step, 0)
    evals = steps // cfg.eval_every + 1
    train = steps * batch * tokens / costs["train_tokens_per_s"]
    dev = evals * cfg.eval_examples * tokens / costs["forward_tokens_per_s"]
    return train + dev


def score_seconds(params: dict, costs: dict) -> float | None:
    method = params.get("method", "ab")
    examples = params.get("val_examples", 64)
    per = costs["score_s"]
    if method == "ab":
        return costs["modules"] * examples * per["ab_per_module_example"]
    if method in SCORE_METHODS_PER_EXAMPLE:
        seconds = examples * per[f"{SCORE_METHODS_PER_EXAMPLE[method]}_per_example"]
        if params.get("refine"):
            seconds += REFINED_SHARE * costs["modules"] * examples * per["ab_per_module_example"]
        return seconds
    return None


def eval_seconds(params: dict, costs: dict) -> float:
    rows = split_size(params["task"], "test")
    if params.get("limit"):
        rows = min(rows, params["limit"])
    per_row = costs["eval_row_s"].get(params["task"], costs["eval_row_s"]["default"])
    return rows * per_row


def at_precision(costs: dict, precision: str | None, device: str = "auto") -> dict:
    """The costs of a unit run in ``precision`` (``auto`` as it resolves on ``device``
    here): the file's section measured in that precision, where there is one, over the
    top-level costs."""
    if precision == "auto":
        try:
            precision = resolve_precision(precision, resolve_device(device))
        except FanLoRAError:  # a device this machine lacks: priced at the file's precision
            precision = None
    section = costs.get(precision) if precision else None
    return {**costs, **section} if isinstance(section, dict) else costs


def machine_note(costs: dict, here: dict | None = None) -> str | None:
    """A warning when the costs were measured on another kind of CPU than this one (its
    name, or whether it computes bf16 natively: emulated bf16 is ~30x slower, and
    ``--precision auto`` resolves to fp32 there); None when it is the same or unknown."""
    there, here = costs.get("machine"), here or cpu_machine()
    if not isinstance(there, dict) or there == here:
        return None
    bf16 = {True: "native bf16", False: "no native bf16"}
    return (
        f"note: these costs were measured on {there.get('cpu')} "
        f"({bf16.get(there.get('native_bf16'), 'bf16 unknown')}); this machine is "
        f"{here['cpu']} ({bf16[here['native_bf16']]}), so the estimate may be far off: "
        "measure here with `python bench/unit_costs.py --out FILE` and pass --costs FILE"
    )


def unit_seconds(unit: Unit, costs: dict, from_step: int = 0) -> float | None:
    """The estimated seconds of one unit (see the module docstring); a training unit from
    ``from_step``, the step its checkpoint resumes from."""
    precision, device = unit.params.get("precision"), unit.params.get("device") or "auto"
    costs = at_precision(costs, precision, device)
    if unit.stage in ("full-lora", "downstream"):
        return train_seconds(unit.params, costs, from_step)
    if unit.stage == "scores":
        return score_seconds(unit.params, costs)
    if unit.stage == "eval":
        return eval_seconds(unit.params, costs)
    if unit.stage == "decode":
        return costs["decode_s"]
    return 0.0


def plan(points, out: Path, reuse: list[Path], costs: dict) -> list[PlannedUnit]:
    """The units of ``points`` left to compute, each once, with their estimates."""
    others = [RunDir(p) for p in reuse]
    seen: set[str] = set()
    todo = []
    for point in points:
        run_dir = RunDir(out / point.name)
        units = build_units(point.config, run_dir)
        assign_keys(units)
        revive = revived(run_dir, units, set())  # pruned weights a unit that runs reads
        for unit in units:
            if unit.key in seen or unit.stage == "report":
                continue
            seen.add(unit.key)
            done = run_dir.is_done(unit) or any(o.is_done(unit) for o in others)
            if done and unit.name not in revive:
                continue
            step = checkpoint_step(RunFolder(run_dir.folder(unit)).checkpoints)
            todo.append(PlannedUnit(point.name, unit, unit_seconds(unit, costs, step)))
    return todo


def describe(todo: list[PlannedUnit]) -> str:
    """Per stage: units and estimated hours; the total; units with no estimate."""
    count = Counter(p.unit.stage for p in todo)
    hours: Counter = Counter()
    for p in todo:
        hours[p.unit.stage] += (p.seconds or 0) / 3600
    lines = [f"  {stage:<11} {count[stage]:>4} unit(s)  {hours[stage]:7.1f} h" for stage in count]
    unknown = [f"{p.point}/{p.unit.name}" for p in todo if p.seconds is None]
    total = sum(hours.values())
    lines.append(f"  {'total':<11} {len(todo):>4} unit(s)  {total:7.1f} h (estimate)")
    if unknown:
        lines.append(f"  not estimated (no measured cost): {', '.join(unknown[:5])}")
    return "\n".join(lines)


def total_hours(todo: list[PlannedUnit]) -> float:
    return sum(p.seconds or 0 for p in todo) / 3600
