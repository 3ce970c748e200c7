"""Data in the formats of Hugging Face ``datasets``, named the way users name it.

``--data`` (and a pipeline's task or step data) may be:

- a Hub id, ``owner/name`` or ``owner/name:config``: the Hub's copy through
  ``datasets.load_dataset``, from the local cache, or downloaded into it unless downloads
  are off (``--offline``, ``HF_DATASETS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``);
- a folder written by ``save_to_disk`` (a ``Dataset`` or a ``DatasetDict``);
- a ``.parquet`` or ``.arrow`` file;
- a ``.yaml`` data spec, in the spirit of LLaMA-Factory's ``dataset_info.json`` and axolotl's
  ``datasets:`` entries::

      path: owner/name          # any of the above
      name: config              # optional: the Hub config
      split: train              # optional: use this split only (then split 90/5/5 by hash)
      columns:                  # optional: fanlora's field -> the dataset's column
        instruction: question
        output: answer

Splits: a ``DatasetDict``'s ``train``/``validation`` (or ``dev``)/``test`` become train/dev/
test; a single split is split 90/5/5 by hash, as a user's file. Layouts recognised without a
mapping: chat ``messages`` ({role, content}), ShareGPT ``conversations`` ({from, value}),
``instruction``/``input``/``output`` (Alpaca), ``prompt``/``completion``; rows then go
through the same checks as a user's file (:mod:`fanlora.data.user_files`).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import yaml

from fanlora.data.conversation import from_sharegpt
from fanlora.data.example import Example
from fanlora.data.user_files import examples_in_split
from fanlora.errors import FanLoRAError

FILE_SUFFIXES = (".parquet", ".arrow")
SPEC_SUFFIXES = (".yaml", ".yml")
FIELDS = ("instruction", "input", "output", "references", "choices", "label", "messages", "split")
SPLIT_NAMES = {"train": "train", "validation": "dev", "valid": "dev", "dev": "dev", "test": "test"}
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?")


@dataclass
class DataSpec:
    """Where a dataset is and how its columns map to fanlora's fields (module docstring)."""

    path: str
    name: str | None = None
    split: str | None = None
    columns: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(FIELDS))
        if unknown or not all(isinstance(c, str) for c in self.columns.values()):
            raise FanLoRAError(
                f"columns: {unknown or self.columns} - map fanlora's fields "
                f"({', '.join(FIELDS)}) to column names"
            )


def is_hf_data(name: str) -> bool:
    """Whether ``name`` is one of this module's forms (module docstring)."""
    path = Path(name).expanduser()
    if path.suffix in FILE_SUFFIXES + SPEC_SUFFIXES:
        return True
    if path.is_dir():
        return any((path / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))
    return bool(HUB_ID.fullmatch(name)) and not path.exists()


def read_spec(name: str) -> DataSpec:
    path = Path(name).expanduser()
    if path.suffix not in SPEC_SUFFIXES:
        hub_name = name.partition(":")[2] if HUB_ID.fullmatch(name) else None
        return DataSpec(name.partition(":")[0] if hub_name else name, hub_name or None)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FanLoRAError(f"data spec not found: {path}") from None
    except yaml.YAMLError as exc:
        raise FanLoRAError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("path"), str):
        raise FanLoRAError(f"{path}: a data spec is a mapping with at least 'path'")
    try:
        return DataSpec(**doc)
    except TypeError as exc:
        raise FanLoRAError(f"{path}: {exc} (keys: path, name, split, columns)") from None


def offline() -> bool:
    flags = (os.environ.get(k, "") for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"))
    return any(f.strip().upper() in {"1", "ON", "YES", "TRUE"} for f in flags)


def open_dataset(spec: DataSpec):
    """The ``Dataset`` or ``DatasetDict`` ``spec`` names; clear errors otherwise."""
    path = Path(spec.path).expanduser()
    if path.is_dir():
        return datasets.load_from_disk(str(path))
    if path.suffix in FILE_SUFFIXES:
        if not path.is_file():
            raise FanLoRAError(f"data file not found: {path}")
        kind = path.suffix.lstrip(".")
        return datasets.load_dataset(kind, data_files=str(path), split="train")
    if not HUB_ID.fullmatch(spec.path):
        raise FanLoRAError(f"{spec.path} is not a dataset folder, file or Hub id")
    return hub_dataset(spec)


def hub_dataset(spec: DataSpec):
    where = spec.path + (f" (config {spec.name})" if spec.name else "")
    try:
        return datasets.load_dataset(spec.path, spec.name)
    except Exception as exc:  # datasets raises many types: offline, unknown, gated, network
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:300]
        if offline():
            raise FanLoRAError(
                f"dataset {where} is not in the local Hugging Face cache and downloads are "
                "off (--offline, HF_DATASETS_OFFLINE or HF_HUB_OFFLINE): download it on a "
                f"machine with network (`datasets.load_dataset('{spec.path}')`) and copy the "
                f"cache, or save it with save_to_disk and pass the folder ({first})"
            ) from None
        raise FanLoRAError(f"cannot load dataset {where} from the Hub: {first}") from None


def split_tables(data, spec: DataSpec) -> list[tuple[str, object]]:
    """(fanlora split or "" for the hash rule, table) pairs."""
    if isinstance(data, datasets.DatasetDict):
        if spec.split:
            if spec.split not in data:
                raise FanLoRAError(f"{spec.path} has no split {spec.split!r}: {list(data)}")
            return [("", data[spec.split])]
        known = [(SPLIT_NAMES[k], t) for k, t in data.items() if k in SPLIT_NAMES]
        if not known:
            raise FanLoRAError(f"{spec.path}: none of its splits {list(data)} is train/dev/test")
        return known if len(known) > 1 else [("", known[0][1])]
    return [("", data)]


def mapped_row(row: dict, columns: dict) -> dict:
    """fanlora's fields of ``row``: the spec's mapping first, then the common layouts."""
    out = {fld: row[col] for fld, col in columns.items()}
    rest = {k: v for k, v in row.items() if k not in columns.values()}
    if "messages" not in out and isinstance(rest.get("conversations"), list):
        out["messages"] = from_sharegpt(rest["conversations"])
    if "instruction" not in out and "prompt" in rest and "completion" in rest:
        out.update(instruction=rest["prompt"], output=rest["completion"])
    return {**{k: v for k, v in rest.items() if k in FIELDS}, **out}


def check_columns(table, spec: DataSpec) -> None:
    missing = sorted(c for c in spec.columns.values() if c not in table.column_names)
    if missing:
        raise FanLoRAError(
            f"{spec.path}: the column mapping names {missing}, which the dataset lacks; its "
            f"columns are {', '.join(table.column_names)}"
        )


def load_hf_split(name: str, split: str) -> list[Example]:
    """The examples of ``split`` of the dataset ``name`` names (module docstring)."""
    spec = read_spec(name)
    rows = []
    for fixed, table in split_tables(open_dataset(spec), spec):
        check_columns(table, spec)
        tag = {"split": fixed} if fixed else {}
        rows += [{**mapped_row(r, spec.columns), **tag} for r in table]
        columns = table.column_names
    try:
        return examples_in_split(Path(spec.path), rows, split)
    except FanLoRAError as exc:
        raise FanLoRAError(
            f"{exc}; the dataset's columns are {', '.join(columns)}: map them to fanlora's "
            "fields with a .yaml data spec's 'columns'"
        ) from None
