"""What ``fanlora run`` checks before it creates anything: every dataset each step reads
is there and not empty, every task has a metric, and the model can be had.

A refused run creates nothing: no run folder, no log, no stage folder. The model comes
last, since resolving a preset may convert it (SmolLM2: about 45 s) and a Hub id may
download it: a run that fails on its data should not pay for that first.
"""

from __future__ import annotations

from pathlib import Path

from fanlora.data.example import SPLITS
from fanlora.data.hf_data import is_hf_data
from fanlora.data.registry import TASKS, load_split, split_counts, task_metric
from fanlora.errors import FanLoRAError
from fanlora.models import load_config
from fanlora.pipeline.config import RunConfig

STEP_DEFAULT_DATA = "instruct"  # step 1 trains on it, step 2 validates on it


def check_data(name: str, splits: tuple[str, ...], what: str) -> None:
    """Dataset ``name`` has rows in each of ``splits`` (a registered one: per its manifest;
    a file: read and parsed, so a bad row is named now, not at step 4)."""
    if name in TASKS:
        counts = split_counts()
        if counts is None or name not in counts:
            raise FanLoRAError(
                f"{what}: dataset {name!r} is not prepared: run `fanlora data prepare`"
            )
        empty = [s for s in splits if not counts[name].get(s)]
    else:
        empty = [s for s in splits if not _rows(name, s)]
    if empty:
        raise FanLoRAError(f"{what}: the {', '.join(empty)} split(s) of {name!r} are empty")


def _rows(name: str, split: str) -> int:
    try:
        return len(load_split(name, split))
    except FanLoRAError as exc:
        if "is empty" in str(exc):
            return 0
        raise


def own_metric(task: str) -> str | None:
    """A task's own metric: a registered task's, or accuracy for a file with options."""
    try:
        return task_metric(task, load_split(task, "test") if task not in TASKS else None)
    except FanLoRAError:
        return None


def task_metrics(cfg: RunConfig) -> dict[str, str]:
    """Each task's metric: ``task_metrics[task]``, else the task's own, else
    ``evaluation.metric``; an error naming the tasks that have none."""
    fallback = cfg.section("evaluation").get("metric")
    chosen = {t: (cfg.task_metrics or {}).get(t) or own_metric(t) or fallback for t in cfg.tasks}
    missing = [t for t, metric in chosen.items() if metric is None]
    if missing:
        raise FanLoRAError(
            f"task(s) {missing} have no metric of their own (no options to score by accuracy): "
            "set one per task, `task_metrics: {TASK: f1_em}` (f1_em, sql_em, number_acc or "
            "accuracy), or evaluation.metric for every such task"
        )
    return chosen


def check_run(cfg: RunConfig) -> dict[str, str]:
    """Everything a run reads, checked up front (module docstring); the metric per task."""
    step1 = cfg.section("full_lora").get("data", STEP_DEFAULT_DATA)
    check_data(step1, ("train", "dev"), "full_lora.data (step 1)")
    scoring = cfg.section("scoring")
    split = scoring.get("split", "dev")
    check_data(scoring.get("data", STEP_DEFAULT_DATA), (split,), "scoring.data (step 2)")
    for task in cfg.tasks:
        if task not in TASKS and not is_hf_data(task) and not Path(task).is_file():
            raise FanLoRAError(f"task file not found: {task}")
        check_data(task, SPLITS, f"task {task!r} (steps 4-5)")
    metrics = task_metrics(cfg)
    load_config(cfg.model)  # a Hub id that cannot be had, or a broken folder, fails here
    return metrics
