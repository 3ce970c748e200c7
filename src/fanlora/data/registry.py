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

from fanlora.data import builders
from fanlora.data.bigbench import BIGBENCH_VERSION, data_root, extracted_dir
from fanlora.data.example import SPLITS, Example, split_of
from fanlora.errors import FanLoRAError
from fanlora.utils.io import atomic_dir, atomic_write_json

SPLIT_SEED = 0
TASKS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class TaskSpec:
    """A dataset: how to build it, how to split it, how to score it."""

    name: str
    builder: Callable[[Path], list[Example]]
    fractions: tuple[float, float, float]  # train, dev, test
    metric: str  # loss | f1_em | sql_em | number_acc | accuracy
    role: str  # the paper's dataset this one stands in for
    source: str
    # Evaluation's default tokens per sequence: the smallest length at which at least 90%
    # of the test prompts that hold a reference answer still hold it after truncation, on
    # SmolLM2's tokenizer (bench/truncation.py: SQuAD 69.8% at 192, 92.6% at 256).
    max_length: int = 192


TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "instruct",
            builders.build_instruct,
            (0.98, 0.01, 0.01),
            "loss",
            "UltraChat",
            "BIG-bench natural_instructions (Natural Instructions v1, 61 subtasks)",
            512,
        ),
        # The paper tests on SQuAD's dev set; only that file ships here, so its 48 articles are
        # split into train/dev/test by article (no passage is shared across splits).
        TaskSpec(
            "squad",
            builders.build_squad,
            (0.6, 0.1, 0.3),
            "f1_em",
            "SQuAD v1.1",
            "BIG-bench squad_shifts/squaddev_v1.1.json (SQuAD v1.1 dev)",
            256,
        ),
        TaskSpec(
            "sql",
            builders.build_sql,
            (0.7, 0.1, 0.2),
            "sql_em",
            "Q2SQL",
            "BIG-bench semantic_parsing_spider (Spider)",
            512,
        ),
        TaskSpec(
            "math",
            builders.build_math,
            (0.8, 0.1, 0.1),
            "number_acc",
            "HSM10K",
            "BIG-bench elementary_math_qa/question_only (MathQA)",
        ),
        # BoolQ and COPA lack public test labels, so the paper halves their dev sets; these
        # sets ship without an official split, so all three splits are drawn by hash.
        TaskSpec(
            "yesno",
            builders.build_yesno,
            (0.8, 0.1, 0.1),
            "accuracy",
            "BoolQ",
            "BIG-bench strategyqa + yes/no turns of coqa_conversational_question_answering",
        ),
        TaskSpec(
            "choice",
            builders.build_choice,
            (0.6, 0.2, 0.2),
            "accuracy",
            "COPA",
            "BIG-bench cause_and_effect (one_sentence, two_sentences) + social_iqa",
        ),
        TaskSpec(
            "mc",
            builders.build_mc,
            (0.6, 0.1, 0.3),
            "accuracy",
            "MMLU",
            "BIG-bench physics, hindu_knowledge, general_knowledge, misconceptions, "
            "truthful_qa (task_mc)",
        ),
    ]
}


def tasks_dir() -> Path:
    return data_root() / "tasks"


def manifest_path() -> Path:
    return tasks_dir() / "manifest.json"


def build_tasks(log: Callable[[str], None] = print) -> dict:
    """Build every task's splits from the extracted folders; return the manifest."""
    root = extracted_dir()
    if not (root / "COMPLETE").is_file():
        raise FanLoRAError("BIG-bench is not extracted yet: run `fanlora data prepare`")
    with atomic_dir(tasks_dir()) as work:
        counts = {}
        for spec in TASKS.values():
            examples = spec.builder(root)
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


def _user_rows(path: Path) -> list[dict]:
    if not path.is_file():
        raise FanLoRAError(f"data file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".csv":
            return list(csv.DictReader(text.splitlines()))
        if path.suffix == ".jsonl":
            return [json.loads(line) for line in text.splitlines() if line.strip()]
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FanLoRAError(f"{path} is not valid JSON: {exc}") from None
    return rows if isinstance(rows, list) else rows.get("examples", rows.get("data", []))


def _user_example(path: Path, i: int, row: dict) -> Example:
    where = f"{path} row {i + 1}"
    if not isinstance(row, dict):
        raise FanLoRAError(f"{where}: expected an object")
    split = row.get("split") or ""
    if split and split not in SPLITS:
        raise FanLoRAError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    if "messages" in row:  # chat: every turn before the last assistant turn is the prompt
        messages = row["messages"]
        if not messages or messages[-1].get("role") != "assistant":
            raise FanLoRAError(f"{where}: 'messages' must end with an assistant turn")
        prompt = "\n\n".join(m["content"] for m in messages[:-1] if m.get("role") != "system")
        output = messages[-1]["content"]
    else:
        missing = [k for k in ("instruction", "output") if not row.get(k)]
        if missing:
            raise FanLoRAError(
                f"{where}: missing {', '.join(missing)} (need instruction, "
                "optional input, output; or chat 'messages')"
            )
        prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
        output = str(row["output"])
    return Example(
        uid=f"{path.name}/{i}",
        prompt=prompt,
        response=output,
        references=(output,),
        meta={"split": split},
    )


def load_user_file(path: Path, split: str) -> list[Example]:
    """A user's JSONL/JSON/CSV rows (``instruction``/``input``/``output`` or ``messages``);
    a ``split`` column is honoured, otherwise rows are split 90/5/5 by hash."""
    examples = [_user_example(path, i, row) for i, row in enumerate(_user_rows(path))]
    return [e for e in examples if _user_split(e) == split]


def _user_split(example: Example) -> str:
    return example.meta.get("split") or split_of(example.uid, USER_FRACTIONS, SPLIT_SEED)
