"""How many test answers survive prompt truncation, per task and max_length.

For every generated-answer task, every test row's prompt is cut as evaluation cuts it
(template + prompt within ``max_length - new tokens``, middle cut) and checked for a
reference answer. The share is over the rows whose whole prompt holds one (SQuAD: nearly
all; SQL: none, so it is not listed). Picks the smallest max_length with >= 90%.

    python bench/truncation.py --model smollm2-135m --out bench/results/truncation.json
"""

from __future__ import annotations

import argparse
import platform

from fanlora.data.registry import TASKS, load_split
from fanlora.evaluate.generate import prompt_ids, references_kept
from fanlora.evaluate.run import DEFAULT_NEW_TOKENS
from fanlora.models import load_tokenizer
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions

GOAL = 90.0


def survival(tok, examples, max_length: int, new_tokens: int) -> dict:
    kept = references_kept(tok, examples, prompt_ids(tok, examples, max_length - new_tokens))
    flags = [k for k in kept if k is not None]
    share = 100 * sum(flags) / len(flags) if flags else None
    return {"max_length": max_length, "share": share, "rows_checked": len(flags)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    lengths = [192, 256, 320, 384, 448, 512, 640, 768]
    parser.add_argument("--lengths", type=int, nargs="+", default=lengths)
    parser.add_argument("--out", default="bench/results/truncation.json")
    args = parser.parse_args()
    tok = load_tokenizer(args.model)
    tasks = {}
    for name, spec in TASKS.items():
        if spec.metric not in DEFAULT_NEW_TOKENS:
            continue
        examples = load_split(name, "test")
        rows = [survival(tok, examples, n, DEFAULT_NEW_TOKENS[spec.metric]) for n in args.lengths]
        if all(r["share"] is None for r in rows):
            continue
        enough = [r["max_length"] for r in rows if r["share"] is not None and r["share"] >= GOAL]
        tasks[name] = {
            "test_rows": len(examples),
            "new_tokens": DEFAULT_NEW_TOKENS[spec.metric],
            "by_max_length": rows,
            "smallest_max_length_for_goal": min(enough, default=None),
        }
        print(name, [(r["max_length"], r["share"] and round(r["share"], 1)) for r in rows])
    record = {
        "benchmark": "truncation",
        "model": args.model,
        "goal_share": GOAL,
        "tasks": tasks,
        "versions": versions(),
        "machine": platform.machine(),
    }
    atomic_write_json(args.out, record)


if __name__ == "__main__":
    main()
