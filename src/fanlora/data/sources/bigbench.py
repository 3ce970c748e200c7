"""The BIG-bench 1.0.0 source (optional since the index stopped serving its sdist on
2026-12-06): task files turned into :class:`Example` lists, one builder per dataset, and
their registration (the end of this file). Built only when the archive was handed over
(``fanlora data prepare --archive``); the names the package sources took (``instruct``,
``squad``, ``sql``, ``math``) are ``bb-`` prefixed here.

Each builder reads the extracted folder ``root`` (``.../benchmark_tasks``) and returns every
example of its dataset; :mod:`fanlora.data.registry` assigns the splits. Another source
(a local corpus, a hub dataset) is one more file like this one: builders that return
examples, and a :func:`~fanlora.data.registry.register_task` call per dataset.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fanlora.data.example import Example
from fanlora.data.registry import TaskSpec, register_task
from fanlora.data.sources.bigbench_sdist import extracted_dir
from fanlora.errors import FanLoRAError

LETTERS = "ABCD"


def read_task(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FanLoRAError(f"{path} is missing: run `fanlora data prepare`") from None
    except json.JSONDecodeError as exc:
        hint = "rerun `fanlora data prepare --force`"
        raise FanLoRAError(f"{path} is not valid JSON ({exc}): {hint}") from None
    return doc


def examples_of(path: Path) -> list[dict]:
    """The ``examples`` of a BIG-bench task.json, each checked for ``input``."""
    doc = read_task(path)
    rows = doc.get("examples")
    if not isinstance(rows, list):
        raise FanLoRAError(f"{path}: no 'examples' list")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or "input" not in row:
            raise FanLoRAError(f"{path}: examples[{i}] has no 'input' field")
        if "target" not in row and "target_scores" not in row:
            raise FanLoRAError(f"{path}: examples[{i}] has neither 'target' nor 'target_scores'")
    return rows


def correct_choice(scores: dict) -> tuple[list[str], int] | None:
    """(options, index of the single best one) from ``target_scores``; None when the row has
    no single correct option (a few source rows mark two): such rows are skipped."""
    if not isinstance(scores, dict) or len(scores) < 2:
        return None
    best = max(scores.values())
    winners = [k for k, v in scores.items() if v == best]
    if len(winners) != 1 or best <= 0:
        return None
    options = list(scores)
    return options, options.index(winners[0])


def build_instruct(root: Path) -> list[Example]:
    """Natural Instructions v1 (61 subtasks): ``task_prefix`` definition + input -> target."""
    out = []
    for path in sorted((root / "natural_instructions").glob("subtask*/task.json")):
        doc = read_task(path)
        definition = doc.get("task_prefix") or doc.get("description", "")
        for i, row in enumerate(examples_of(path)):
            target = row.get("target")
            target = target[0] if isinstance(target, list) and target else target
            if not isinstance(target, str):
                raise FanLoRAError(f"{path}: examples[{i}] target is not text")
            out.append(
                Example(
                    uid=f"{path.parent.name}/{i}",
                    prompt=f"{definition.strip()}\n\n{row['input'].strip()}",
                    response=target.strip(),
                )
            )
    return out


def build_squad(root: Path) -> list[Example]:
    """SQuAD v1.1 dev questions; the article title is the split group."""
    path = root / "squad_shifts" / "squaddev_v1.1.json"
    out = []
    for article in read_task(path)["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                answers = tuple(dict.fromkeys(a["text"].strip() for a in qa["answers"]))
                out.append(
                    Example(
                        uid=qa["id"],
                        group=article["title"],
                        response=answers[0],
                        references=answers,
                        prompt=(
                            "Answer the question with a short span copied from the passage."
                            f"\n\nPassage: {paragraph['context'].strip()}"
                            f"\n\nQuestion: {qa['question'].strip()}"
                        ),
                    )
                )
    return out


def build_sql(root: Path) -> list[Example]:
    """Spider: question | schema columns -> SQL (values replaced by 'value')."""
    path = root / "semantic_parsing_spider" / "task.json"
    prefix = read_task(path).get("task_prefix", "Write a SQL query.")
    out = []
    for i, row in enumerate(examples_of(path)):
        question, _, columns = row["input"].partition(" | ")
        targets = row["target"] if isinstance(row["target"], list) else [row["target"]]
        out.append(
            Example(
                uid=f"spider/{i}",
                response=targets[0],
                references=tuple(targets),
                prompt=f"{prefix}\n\nQuestion: {question.strip()}\nColumns: {columns.strip()}",
            )
        )
    return out


def build_math(root: Path) -> list[Example]:
    """MathQA word problems -> the marked numeric answer."""
    path = root / "elementary_math_qa" / "question_only" / "task.json"
    out = []
    for i, row in enumerate(examples_of(path)):
        if (picked := correct_choice(row["target_scores"])) is None:
            continue
        options, label = picked
        out.append(
            Example(
                uid=f"mathqa/{i}",
                response=options[label],
                references=(options[label],),
                prompt="Solve the math word problem. Give only the final number."
                f"\n\n{row['input'].strip()}",
            )
        )
    return out


def _yes_no(uid: str, prompt: str, yes: bool) -> Example:
    return Example(
        uid=uid,
        prompt=prompt,
        response="Yes" if yes else "No",
        choices=("Yes", "No"),
        label=0 if yes else 1,
    )


def build_yesno(root: Path) -> list[Example]:
    """StrategyQA questions and the yes/no turns of CoQA (story + the last two turns)."""
    path = root / "strategyqa" / "task.json"
    out = []
    for i, row in enumerate(examples_of(path)):
        scores = row["target_scores"]
        out.append(
            _yes_no(
                f"strategyqa/{i}",
                f"Answer the question with Yes or No.\n\nQuestion: {row['input'].strip()}",
                scores.get("Yes", 0) == 1,
            )
        )
    coqa = read_task(root / "coqa_conversational_question_answering" / "coqa.test.json")
    for story in coqa["data"]:
        turns = [
            (q["input_text"].strip(), a["input_text"].strip())
            for q, a in zip(story["questions"], story["answers"], strict=False)
        ]
        for t, (question, answer) in enumerate(turns):
            word = answer.lower().rstrip(".!")
            if word not in ("yes", "no"):
                continue
            history = "".join(f"Q: {q}\nA: {a}\n" for q, a in turns[max(0, t - 2) : t])
            out.append(
                _yes_no(
                    f"coqa/{story['id']}/{t}",
                    "Answer the question about the story "
                    f"with Yes or No.\n\nStory: {story['story'].strip()}\n\n{history}"
                    f"Question: {question}",
                    word == "yes",
                )
            )
    return out


def build_choice(root: Path) -> list[Example]:
    """COPA-style choices: cause_and_effect (two framings) and social_iqa (3 options)."""
    framings = {
        "one_sentence": "Which of the following sentences makes more sense?",
        "two_sentences": "Which of these two events caused the other?",
    }
    out = []
    for folder, question in framings.items():
        path = root / "cause_and_effect" / folder / "task.json"
        for i, row in enumerate(examples_of(path)):
            if (picked := correct_choice(row["target_scores"])) is None:
                continue
            options, label = picked
            listing = "\n".join(f"- {o}" for o in options)
            out.append(
                Example(
                    uid=f"cause_effect/{folder}/{i}",
                    prompt=f"{question}\n{listing}",
                    response=options[label],
                    choices=tuple(options),
                    label=label,
                    group=f"cause_effect/{i}",
                )
            )
    path = root / "social_iqa" / "task.json"
    for i, row in enumerate(examples_of(path)):
        if (picked := correct_choice(row["target_scores"])) is None:
            continue
        options, label = picked
        listing = "\n".join(f"- {o}" for o in options)
        out.append(
            Example(
                uid=f"social_iqa/{i}",
                response=options[label],
                choices=tuple(options),
                label=label,
                prompt=f"{row['input'].strip()}\nWhich answer fits best?\n{listing}",
            )
        )
    return out


MC_SOURCES = {
    "physics": ("physics/task.json", "Which formula is most useful for this problem?\n"),
    "hindu_knowledge": ("hindu_knowledge/task.json", ""),
    "general_knowledge": ("general_knowledge/task.json", ""),
    "misconceptions": ("misconceptions/task.json", "Which is true of this statement?\n"),
    "truthful_qa": ("truthful_qa/task_mc.json", ""),
}


def build_mc(root: Path) -> list[Example]:
    """Pooled multiple-choice knowledge tasks as MMLU-style A-D (the right option and up to
    three wrong ones, in the file's order); the response is the letter."""
    out = []
    for name, (relative, lead) in MC_SOURCES.items():
        path = root / relative
        for i, row in enumerate(examples_of(path)):
            if (picked := correct_choice(row["target_scores"])) is None:
                continue
            options, label = picked
            if name == "misconceptions":  # T/F labels are read as statements of truth
                options = ["True" if o == "T" else "False" for o in options]
            wrong = [o for j, o in enumerate(options) if j != label][:3]
            kept = [o for o in options if o == options[label] or o in wrong]
            letters = LETTERS[: len(kept)]
            listing = "\n".join(f"{k}. {o}" for k, o in zip(letters, kept, strict=True))
            answer = letters[kept.index(options[label])]
            out.append(
                Example(
                    uid=f"{name}/{i}",
                    response=answer,
                    choices=tuple(letters),
                    label=letters.index(answer),
                    prompt=f"{lead}{row['input'].strip()}\n\n{listing}\n\n"
                    "Answer with the letter of the correct option.",
                )
            )
    return out


def from_bigbench(build: Callable[[Path], list[Example]]) -> Callable[..., list[Example]]:
    """A task builder reading the extracted BIG-bench folder, or saying how to get it."""

    def builder(packages=None) -> list[Example]:
        root = extracted_dir()
        if not bigbench_extracted():
            raise FanLoRAError(
                "BIG-bench is not extracted: run `fanlora data prepare --archive "
                "bigbench-1.0.0.tar.gz` (the index no longer serves it)"
            )
        return build(root)

    return builder


def bigbench_extracted(packages=None) -> bool:
    return (extracted_dir() / "COMPLETE").is_file()


# The paper's datasets as BIG-bench stand-ins, in the order they are built and listed.
# name, builder, (train, dev, test) fractions, metric, the paper's role, source[, max_length]
BIGBENCH_TASKS = [
    (
        "bb-instruct",
        build_instruct,
        (0.98, 0.01, 0.01),
        "loss",
        "UltraChat",
        "BIG-bench natural_instructions (Natural Instructions v1, 61 subtasks)",
        512,
    ),
    # The paper tests on SQuAD's dev set; only that file ships here, so its 48 articles are
    # split into train/dev/test by article (no passage is shared across splits).
    (
        "bb-squad",
        build_squad,
        (0.6, 0.1, 0.3),
        "f1_em",
        "SQuAD v1.1",
        "BIG-bench squad_shifts/squaddev_v1.1.json (SQuAD v1.1 dev)",
        256,
    ),
    (
        "bb-sql",
        build_sql,
        (0.7, 0.1, 0.2),
        "sql_em",
        "Q2SQL",
        "BIG-bench semantic_parsing_spider (Spider)",
        512,
    ),
    (
        "bb-math",
        build_math,
        (0.8, 0.1, 0.1),
        "number_acc",
        "HSM10K",
        "BIG-bench elementary_math_qa/question_only (MathQA)",
        192,
    ),
    # BoolQ and COPA lack public test labels, so the paper halves their dev sets; these
    # sets ship without an official split, so all three splits are drawn by hash.
    (
        "yesno",
        build_yesno,
        (0.8, 0.1, 0.1),
        "accuracy",
        "BoolQ",
        "BIG-bench strategyqa + yes/no turns of coqa_conversational_question_answering",
        192,
    ),
    (
        "choice",
        build_choice,
        (0.6, 0.2, 0.2),
        "accuracy",
        "COPA",
        "BIG-bench cause_and_effect (one_sentence, two_sentences) + social_iqa",
        192,
    ),
    (
        "mc",
        build_mc,
        (0.6, 0.1, 0.3),
        "accuracy",
        "MMLU",
        "BIG-bench physics, hindu_knowledge, general_knowledge, misconceptions, "
        "truthful_qa (task_mc)",
        192,
    ),
]

for name, build, fractions, metric, role, source, max_length in BIGBENCH_TASKS:
    register_task(
        TaskSpec(
            name,
            from_bigbench(build),
            fractions,
            metric,
            role,
            source,
            max_length,
            license="Apache-2.0 (BIG-bench); see the README for each original dataset",
            packages=("bigbench==1.0.0 (sdist)",),
            optional=True,
            available=bigbench_extracted,
        )
    )
