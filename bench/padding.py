"""What packing could save: the share of padding in fanlora's training micro-batches.

Packing several examples into one sequence removes padding and nothing else, so the
padding share of the batches training really builds (length-grouped batches of
``--batch-size`` cut into micro-batches of ``--micro-batch-size``, one epoch) bounds its
gain from above. Counted from the tokenizer alone, per task and model.

    FANLORA_HOME=... python bench/padding.py --out bench/results/padding.json
"""

from __future__ import annotations

import argparse

from fanlora.data.formatting import encode_all, length_grouped_batches
from fanlora.data.registry import load_sample
from fanlora.models import load_tokenizer
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def padding_share(lengths: list[int], batch: int, micro: int, seed: int = 0) -> dict:
    """Real and padded tokens over one epoch of length-grouped batches."""
    real = padded = 0
    for indices in length_grouped_batches(lengths, batch, seed):
        for start in range(0, len(indices), micro):
            part = [lengths[i] for i in indices[start : start + micro]]
            real += sum(part)
            padded += max(part) * len(part)
    return {"real_tokens": real, "fed_tokens": padded, "padding_share": 1 - real / padded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    parser.add_argument("--tasks", nargs="+", default=["instruct", "boolq"])
    parser.add_argument("--rows", type=int, default=4000, help="seeded draw of train rows")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--micro-batch-size", type=int, default=4)
    parser.add_argument("--out", default="bench/results/padding.json")
    args = parser.parse_args()
    results = []
    for model in args.models:
        tok = load_tokenizer(model)
        for task in args.tasks:
            rows, _ = encode_all(tok, load_sample(task, "train", args.rows, 0), args.max_length)
            lengths = [len(r["input_ids"]) for r in rows]
            share = padding_share(lengths, args.batch_size, args.micro_batch_size)
            results.append({"model": model, "task": task, "rows": len(rows), **share})
            print(f"{model} {task}: padding {100 * share['padding_share']:.1f}% of fed tokens")
    atomic_write_json(
        args.out,
        {"benchmark": "padding", "args": vars(args), "results": results, "versions": versions()},
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
