"""How much of step 1's instruction set survives at each max_length: dialogues kept (their
last exchange fits) and assistant turns trained on (after whole earlier exchanges are
dropped), on a seeded sample of the ``instruct`` train split.

    python bench/conversations.py --model smollm2-135m --out bench/results/conversations.json
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics

from fanlora.data.conversation import IGNORE, encode_conversation
from fanlora.data.registry import load_split
from fanlora.models import load_tokenizer
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def survival(tokenizer, examples, max_length: int) -> dict:
    """Dialogues kept and assistant turns kept (trained on) at ``max_length``."""
    kept = turns = turns_all = 0
    lengths = []
    for example in examples:
        answers = sum(m["role"] == "assistant" for m in example.messages)
        turns_all += answers
        row = encode_conversation(tokenizer, example.messages, max_length)
        if row is None:
            continue
        kept += 1
        lengths.append(len(row["input_ids"]))
        labels = row["labels"]  # one run of trained labels per assistant turn kept
        turns += sum(
            1 for i, t in enumerate(labels) if t != IGNORE and (i == 0 or labels[i - 1] == IGNORE)
        )
    return {
        "max_length": max_length,
        "dialogues_kept_share": 100 * kept / len(examples),
        "assistant_turns_kept_share": 100 * turns / turns_all,
        "median_tokens_kept": statistics.median(lengths) if lengths else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 768, 1024, 2048])
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--out", default="bench/results/conversations.json")
    args = parser.parse_args()
    tokenizer = load_tokenizer(args.model)
    rows = load_split("instruct", "train")
    sample = random.Random(0).sample(rows, min(args.sample, len(rows)))
    answers = [len(m["content"]) for e in sample for m in e.messages if m["role"] == "assistant"]
    doc = {
        "model": args.model,
        "dialogues": len(sample),
        "assistant_turns": len(answers),
        "median_answer_chars": statistics.median(answers),
        "rows": [survival(tokenizer, sample, n) for n in args.lengths],
        "machine": platform.machine(),
        "versions": versions(),
    }
    atomic_write_json(args.out, doc)
    for row in doc["rows"]:
        print(row)


if __name__ == "__main__":
    main()
