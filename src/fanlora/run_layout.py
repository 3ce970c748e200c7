"""The run folder's layout: the one place that knows where each unit's files live.

A ``fanlora run`` folder holds one folder per unit of work::

    run.json                      the run's config and fanlora version
    1-full-lora/                  step 1 (adapter, run.json, metrics.jsonl)
    2-scores/scores.json          step 2 (+ heatmap, journal)
    3-setting/setting.json        step 3
    4-downstream/TASK/METHOD/     step 4 (adapter, run.json, metrics.jsonl)
    5-eval/TASK/METHOD/           metrics.json + predictions.jsonl
    6-decode/decode.json          decoding speed
    report/                       report.md, report.html, figures/

and every unit folder a ``stage.json`` record. The pipeline writes through this class; the
report, the experiment grids and the Python API read through it.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

FULL_LORA = "1-full-lora"
SCORES = "2-scores"
SETTING = "3-setting"
DECODE = "6-decode"
REPORT = "report"
DOWNSTREAM = "4-downstream"
EVAL = "5-eval"


_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def task_folder(task: str) -> str:
    """The folder name of ``task`` inside a run: a dataset name as it is; a file path
    (``../data/x.jsonl``, ``/tmp/x.jsonl``) its safe stem plus 8 hex digits of the path's
    sha256, so no task ever names a path out of the run, and two files called ``x`` differ."""
    if _SAFE.fullmatch(task) and ".." not in task:
        return task
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(task).stem).strip("-.") or "task"
    return f"{stem}-{hashlib.sha256(task.encode()).hexdigest()[:8]}"


def downstream_unit(task: str, method: str) -> str:
    return f"{DOWNSTREAM}/{task_folder(task)}/{method}"


def eval_unit(task: str, method: str) -> str:
    return f"{EVAL}/{task_folder(task)}/{method}"


class RunLayout:
    """Paths inside one run folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def unit(self, name: str) -> Path:
        return self.root / name

    def stage_record(self, name: str) -> Path:
        return self.unit(name) / "stage.json"

    @property
    def full_lora(self) -> Path:
        return self.unit(FULL_LORA)

    @property
    def scores(self) -> Path:
        return self.unit(SCORES) / "scores.json"

    @property
    def setting(self) -> Path:
        return self.unit(SETTING) / "setting.json"

    def downstream(self, task: str, method: str) -> Path:
        return self.unit(downstream_unit(task, method))

    def trained_run(self, task: str, method: str) -> Path:
        """The ``run.json`` of the method's step-4 training on ``task``."""
        return self.downstream(task, method) / "run.json"

    def eval_task(self, task: str) -> Path:
        return self.root / EVAL / task_folder(task)

    def evaluation(self, task: str, method: str) -> Path:
        return self.unit(eval_unit(task, method))

    def metrics(self, task: str, method: str) -> Path:
        return self.evaluation(task, method) / "metrics.json"

    def predictions(self, task: str, method: str) -> Path:
        return self.evaluation(task, method) / "predictions.jsonl"

    @property
    def decode(self) -> Path:
        return self.unit(DECODE) / "decode.json"

    @property
    def report(self) -> Path:
        return self.unit(REPORT)
