"""A user's own data file: ``.jsonl``, ``.json`` or ``.csv`` rows in fanlora's fields.

``instruction`` (+ optional ``input``) with ``output``, ``references`` (every acceptable
answer) or ``choices`` + ``label``; or chat ``messages``. A ``split`` column is honoured,
otherwise rows are split 90/5/5 by hash of their position.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from fanlora.data.conversation import check_turns
from fanlora.data.example import SPLITS, Example, split_of
from fanlora.errors import FanLoRAError

SPLIT_SEED = 0

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


def row_example(path: Path, i: int, row: dict) -> Example:
    """Row ``i`` of a user's data (fanlora's fields) as an Example; errors name the row."""
    where = f"{path} row {i + 1}"
    if not isinstance(row, dict):
        raise FanLoRAError(f"{where}: expected an object")
    split = row.get("split") or ""
    if split and split not in SPLITS:
        raise FanLoRAError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)}")
    if "messages" in row:  # a whole conversation: every assistant turn is trained on
        return _conversation(path, i, where, row["messages"], split)
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


def _conversation(path: Path, i: int, where: str, messages, split: str) -> Example:
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise FanLoRAError(f"{where}: 'messages' must be a list of {{role, content}} objects")
    check_turns(messages, f"{where}: 'messages'")
    turns = tuple({"role": m["role"], "content": m["content"]} for m in messages)
    users = [m["content"] for m in turns if m["role"] == "user"]
    return Example(
        f"{path.name}/{i}",
        users[-1] if users else "",
        turns[-1]["content"],
        meta={"split": split},
        messages=turns,
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
    return examples_in_split(path, _user_rows(path), split)


def examples_in_split(source: Path, rows: list, split: str) -> list[Example]:
    """The rows of ``split``: a row's ``split`` column, else 90/5/5 by hash."""
    examples = [row_example(source, i, row) for i, row in enumerate(rows)]
    return [e for e in examples if user_split(e) == split]


def user_split(example: Example) -> str:
    return example.meta.get("split") or split_of(example.uid, USER_FRACTIONS, SPLIT_SEED)
