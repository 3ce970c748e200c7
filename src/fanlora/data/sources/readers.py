"""Readers the package sources share: OLMo's request files and Arrow ``save_to_disk``
folders."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from datasets import load_from_disk

from fanlora.errors import FanLoRAError


def request_docs(path: Path, key=lambda row: row["doc_id"]) -> list[dict]:
    """The docs of an OLMo ``requests.jsonl.gz``, once each: the file repeats a doc once
    per request (per option, say), so rows are deduplicated by ``key``, in file order."""
    docs: dict = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for n, line in enumerate(handle, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise FanLoRAError(f"{path} line {n} is not valid JSON: {exc.msg}") from None
            docs.setdefault(key(row), row["doc"])
    return list(docs.values())


def arrow_rows(folder: Path) -> list[dict]:
    """Every row of a ``datasets`` ``save_to_disk`` folder."""
    return load_from_disk(str(folder)).to_list()
