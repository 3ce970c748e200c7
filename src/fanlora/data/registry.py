"""The datasets fanlora knows, their deterministic splits, and loading by name or file.

``fanlora data prepare`` builds every task into ``$FANLORA_HOME/data/tasks/<name>/<split>.jsonl``
with a ``manifest.json`` of row counts; loading a split reads one JSONL file. Splits are
assigned by :func:`fanlora.data.example.split_of` with ``SPLIT_SEED`` and each task's
fractions below, on the example's group (so they do not depend on file order).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fanlora.data.bigbench import BIGBENCH_VERSION, data_root
from fanlora.data.example import SPLITS, Example, split_of
from fanlora.errors import FanLoRAError
from fanlora.utils.io import atomic_dir, atomic_write_json
from fanlora.utils.registry import add

SPLIT_SEED = 0
TASKS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskSpec:
    """A dataset: how to build it, how to split it, how to score it.

    ``builder()`` returns every example of the dataset from wherever it comes from (the
    BIG-bench sources in :mod:`fanlora.data.builders`, a local file, a hub dataset); it may
    raise :class:`FanLoRAError` saying how to get its data. A new dataset is one
    :func:`register_task` call in the file of its source.
    """

    name: str
    builder: Callable[[], list[Example]]
    fractions: tuple[float, float, float]  # train, dev, test
    metric: str  # loss | f1_em | sql_em | number_acc | accuracy
    role: str  # the paper's dataset this one stands in for
    source: str
    # Evaluation's default tokens per sequence: the smallest length at which at least 90%
    # of the test prompts that hold a reference answer still hold it after truncation, on
    # SmolLM2's tokenizer (bench/truncation.py: SQuAD 69.8% at 192, 92.6% at 256).
    max_length: int = 192


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec) -> TaskSpec:
    """Make ``spec`` a dataset name every command accepts (built by `fanlora data prepare`)."""
    return add(TASKS, spec.name, spec, "dataset")


def tasks_dir() -> Path:
    return data_root() / "tasks"


def manifest_path() -> Path:
    return tasks_dir() / "manifest.json"


def build_tasks(log: Callable[[str], None] = print) -> dict:
    """Build every registered task's splits; return the manifest."""
    with atomic_dir(tasks_dir()) as work:
        counts = {}
        for spec in TASKS.values():
            examples = spec.builder()
            counts[spec.name] = write_splits(work / spec.name, examples, spec.fractions)
            log(f"  {spec.name:<9} {counts[spec.name]}")
        manifest = {
            "format_version": TASKS_FORMAT_VERSION,
            "bigbench": BIGBENCH_VERSION,
            "split_seed": SPLIT_SEED,
            "counts": counts,
        }
        atomic_write_json(work / "manifest.json", manifest)
    return manifest


def write_splits(folder: Path, examples: list[Example], fractions) -> dict[str, int]:
    """Write ``<split>.jsonl`` files for ``examples``; return the row count per split."""
    folder.mkdir(parents=True)
    lines: dict[str, list[str]] = {s: [] for s in SPLITS}
    for example in examples:
        split = split_of(example.group or example.uid, fractions, SPLIT_SEED)
        lines[split].append(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
    for split, rows in lines.items():
        (folder / f"{split}.jsonl").write_text("".join(rows), encoding="utf-8")
    return {split: len(rows) for split, rows in lines.items()}


def read_manifest() -> dict | None:
    try:
        manifest = json.loads(manifest_path().read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return manifest if manifest.get("format_version") == TASKS_FORMAT_VERSION else None


def split_counts() -> dict[str, dict[str, int]] | None:
    """Rows per task and split, or None when the data is not prepared."""
    manifest = read_manifest()
    return manifest["counts"] if manifest else None


def split_size(name: str, split: str) -> int:
    """Rows of ``split`` of task ``name`` (from the manifest), or of a user's file."""
    counts = split_counts()
    if name in TASKS and counts and name in counts:
        return counts[name][split]
    return len(load_split(name, split))


def load_split(name: str, split: str) -> list[Example]:
    """Every example of task ``name`` (or a local file) in ``split``, in file order; clear
    errors otherwise. For a subset use :func:`load_sample` (a seeded draw): a split file's
    first rows may all come from one source."""
    if split not in SPLITS:
        raise FanLoRAError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if Path(name).suffix in USER_SUFFIXES:
        examples = load_user_file(Path(name), split)
    elif name not in TASKS:
        raise FanLoRAError(
            f"unknown dataset {name!r}; known: {', '.join(TASKS)}, or a .jsonl/.json/.csv file"
        )
    else:
        if read_manifest() is None:
            raise FanLoRAError(f"dataset {name!r} is not prepared: run `fanlora data prepare`")
        path = tasks_dir() / name / f"{split}.jsonl"
        with open(path, encoding="utf-8") as handle:
            examples = [Example.from_dict(json.loads(line)) for line in handle]
    if not examples:
        raise FanLoRAError(f"the {split} split of {name!r} is empty")
    return examples


def load_sample(name: str, split: str, n: int | None, seed: int = 0) -> list[Example]:
    """At most ``n`` examples of the split: a seeded draw (``random.Random(seed).sample``),
    not the file's first rows, which may all come from one source."""
    examples = load_split(name, split)
    if n is not None and len(examples) > n:
        examples = random.Random(seed).sample(examples, n)
    return examples


def task_max_length(name: str) -> int:
    """Evaluation's default tokens per sequence for ``name`` (512 for a user's file)."""
    return TASKS[name].max_length if name in TASKS else 512


def task_metric(name: str, examples: list[Example] | None = None) -> str:
    """The metric of a registered task; for a user file, accuracy when it has options."""
    if name in TASKS:
        return TASKS[name].metric
    if examples and all(e.choices for e in examples):
        return "accuracy"
    raise FanLoRAError(
        f"{name} is not a registered task and has no options: pass --metric "
        "(f1_em, sql_em, number_acc or accuracy)"
    )


USER_SUFFIXES = (".jsonl", ".json", ".csv")
USER_FRACTIONS = (0.9, 0.05, 0.05)


def _user_rows(path: Path) -> list:
    """The rows of a user's file: CSV records, JSONL lines, or a JSON list (or an object
    holding one under ``examples`` or ``data``); errors name the file and the line."""
    if not path.is_file():
        raise FanLoRAError(f"data file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise FanLoRAError(
            f"{path} line {line} is not UTF-8 (byte {exc.start}: {exc.reason}); save the "
            "file as UTF-8"
        ) from None
    if path.suffix == ".csv":
        return list(csv.DictReader(text.splitlines()))
    if path.suffix == ".jsonl":
        return [
            _json_line(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()
        ]
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FanLoRAError(f"{path} is not valid JSON: {exc}") from None
    if isinstance(rows, dict):
        rows = rows.get("examples", rows.get("data"))
    if not isinstance(rows, list):
        raise FanLoRAError(
            f"{path}: expected a JSON list of rows, or an object with a list under "
            f"'examples' or 'data'; got {type(rows).__name__}"
        )
    return rows


def _json_line(path: Path, number: int, line: str):
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise FanLoRAError(
            f"{path} line {number} is not valid JSON: {exc.msg} (column {exc.colno})"
        ) from None


def _user_example(path: Path, i: int, row: dict) -> Example:
    where = f"{path} row {i + 1}"
    if not isinstance(row, dict):
        raise FanLoRAError(f"{where}: expected an object")
    split = row.get("split") or ""
    if split and split not in SPLITS:
        raise FanLoRAError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    if "messages" in row:  # chat: every turn before the last assistant turn is the prompt
        messages = row["messages"]
        turns_ok = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages
        )
        if not turns_ok:
            raise FanLoRAError(f"{where}: 'messages' must be a list of {{role, content}} objects")
        if not messages or messages[-1].get("role") != "assistant":
            raise FanLoRAError(f"{where}: 'messages' must end with an assistant turn")
        prompt = "\n\n".join(m["content"] for m in messages[:-1] if m.get("role") != "system")
        row = {**row, "output": messages[-1]["content"]}
    elif not row.get("instruction"):
        raise FanLoRAError(
            f"{where}: missing instruction (need instruction, optional input, and output, "
            "references or choices + label; or chat 'messages')"
        )
    else:
        prompt = str(row["instruction"]) + (f"\n\n{row['input']}" if row.get("input") else "")
    if "choices" in row:
        choices, label = _user_choices(where, row)
        return Example(
            f"{path.name}/{i}",
            prompt,
            choices[label],
            choices=choices,
            label=label,
            meta={"split": split},
        )
    references = _user_references(where, row)
    return Example(
        f"{path.name}/{i}", prompt, references[0], references=references, meta={"split": split}
    )


def _user_references(where: str, row: dict) -> tuple[str, ...]:
    """``references`` (every acceptable answer; the first is trained on unless ``output``
    is given, which then comes first) or ``output`` alone."""
    refs = row.get("references")
    if refs is not None and (
        not isinstance(refs, list) or not refs or not all(isinstance(r, str) and r for r in refs)
    ):
        raise FanLoRAError(f"{where}: 'references' must be a non-empty list of answers")
    output = str(row["output"]) if row.get("output") not in (None, "") else None
    if output is None and not refs:
        raise FanLoRAError(f"{where}: missing output (or references, or choices + label)")
    return tuple(dict.fromkeys([*([output] if output else []), *(refs or [])]))


def _user_choices(where: str, row: dict) -> tuple[tuple[str, ...], int]:
    """``choices`` (the options) and ``label`` (the right one's index, or its text)."""
    choices, label = row.get("choices"), row.get("label")
    if not isinstance(choices, list) or len(choices) < 2:
        raise FanLoRAError(f"{where}: 'choices' must be a list of at least two options")
    choices = tuple(str(c) for c in choices)
    if isinstance(label, str) and label in choices:
        label = choices.index(label)
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise FanLoRAError(
            f"{where}: 'label' must be the index of the right choice "
            f"(0-{len(choices) - 1}) or its text; got {label!r}"
        )
    return choices, label


def load_user_file(path: Path, split: str) -> list[Example]:
    """A user's JSONL/JSON/CSV rows: ``instruction`` (+ optional ``input``) with ``output``,
    ``references`` (a list of acceptable answers) or ``choices`` + ``label`` (scored by
    accuracy); or chat ``messages``. A ``split`` column is honoured, otherwise rows are
    split 90/5/5 by hash."""
    examples = [_user_example(path, i, row) for i, row in enumerate(_user_rows(path))]
    return [e for e in examples if _user_split(e) == split]


def _user_split(example: Example) -> str:
    return example.meta.get("split") or split_of(example.uid, USER_FRACTIONS, SPLIT_SEED)
