"""A small archive in BIG-bench 1.0.0's layout, written by the tests (no download)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"


def _mc(n, options, right=0, stem="Question"):
    return [
        {
            "input": f"{stem} {i}?",
            "target_scores": {o: int(j == right) for j, o in enumerate(options)},
        }
        for i in range(n)
    ]


def fixture_files(rows: int = 20) -> dict[str, object]:
    """Relative path -> JSON document, for every folder fanlora extracts."""
    ni = {
        f"natural_instructions/subtask{k:03d}_demo/task.json": {
            "task_prefix": f"Definition: demo task {k}.",
            "examples": [
                {"input": f"input {k}-{i} " + "word " * (i % 7), "target": [f"out {k}-{i}"]}
                for i in range(rows)
            ],
        }
        for k in (1, 2)
    }
    squad = {
        "data": [
            {
                "title": f"Article{a}",
                "paragraphs": [
                    {
                        "context": f"Paragraph of article {a} mentions Paris and 42.",
                        "qas": [
                            {
                                "id": f"q{a}-{q}",
                                "question": f"Where {a}-{q}?",
                                "answers": [
                                    {"text": "Paris", "answer_start": 0},
                                    {"text": "in Paris"},
                                ],
                            }
                            for q in range(3)
                        ],
                    }
                ],
            }
            for a in range(10)
        ]
    }
    coqa = {
        "data": [
            {
                "id": f"s{s}",
                "story": f"Story {s}: the cat sat.",
                "questions": [{"input_text": "did it sit?"}, {"input_text": "who sat?"}],
                "answers": [{"input_text": "yes" if s % 2 else "No."}, {"input_text": "the cat"}],
            }
            for s in range(6)
        ]
    }
    two = ["It rained.", "The street got wet."]
    two_right = {"input": "two right?", "target_scores": {"a": 1, "b": 1}}
    files: dict[str, object] = {
        **ni,
        "squad_shifts/squaddev_v1.1.json": squad,
        "semantic_parsing_spider/task.json": {
            "task_prefix": "Write SQL.",
            "examples": [
                {"input": f"How many t{i}? | * | t.a | t.b", "target": [f"select {i}"]}
                for i in range(rows)
            ],
        },
        "elementary_math_qa/question_only/task.json": {"examples": _mc(rows, ["3", "7", "9"], 1)},
        "strategyqa/task.json": {"examples": _mc(rows, ["Yes", "No"], 0, "Is it")},
        "coqa_conversational_question_answering/coqa.test.json": coqa,
        "cause_and_effect/one_sentence/task.json": {
            "examples": [{"input": "", "target_scores": {"A because B.": 1, "B because A.": 0}}] * 4
        },
        "cause_and_effect/two_sentences/task.json": {
            "examples": [{"input": "", "target_scores": {two[0]: 1, two[1]: 0}}] * 4
        },
        "social_iqa/task.json": {"examples": _mc(rows, ["x", "y", "z"], 2)},
        "physics/task.json": {"examples": _mc(5, ["F=ma", "E=mc2", "V=IR", "p=mv", "W=Fd"], 3)},
        "hindu_knowledge/task.json": {"examples": [*_mc(5, ["a", "b", "c", "d"], 0), two_right]},
        "general_knowledge/task.json": {"examples": _mc(5, ["one", "two", "four"], 2)},
        "misconceptions/task.json": {"examples": _mc(5, ["T", "F"], 1)},
        "truthful_qa/task_mc.json": {"examples": _mc(5, ["t", "f1", "f2"], 0)},
    }
    return files


def write_archive(path: Path, files: dict[str, object] | None = None) -> Path:
    """Write a .tar.gz with ``files`` under BIG-bench's folder prefix (plus a stray file)."""
    files = fixture_files() if files is None else files
    with tarfile.open(path, "w:gz") as tar:
        for relative, doc in {**files, "other_task/task.json": {"examples": []}}.items():
            data = json.dumps(doc).encode()
            info = tarfile.TarInfo(PREFIX + relative)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path
