"""Choice-task evaluation before and after running each prompt once, side by side.

For each task, the same seeded draw of test rows is scored by ``option_loglik`` with
``share_prompts=False`` (every option row a full pass: the path before) and ``True`` (the
prompt once, its options on copies of its cache), alternating, after a warm-up, in fp32 and
(where the CPU computes it natively) bf16 autocast. Reports median rows/s, option rows/s,
tokens/s of what each path feeds the model, the speed-up, and how far the two paths' log
likelihoods and choices differ; in bf16 also how far each is from the fp32 full pass.

    FANLORA_HOME=... python bench/choice_eval.py --out bench/results/choice_eval.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from fanlora.data.registry import load_sample, task_max_length
from fanlora.evaluate.choice import option_loglik, option_rows, shared_prompts
from fanlora.models import load_model
from fanlora.utils.devices import Runtime, cpu_has_native_bf16
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions


def fed_tokens(tok, examples, max_length: int) -> dict:
    """Tokens each path feeds the model: every option row whole, or each shared prompt
    once plus every row's continuation."""
    rows, owners = option_rows(tok, examples, max_length)
    groups, alone = shared_prompts(rows, owners)
    whole = sum(len(r["input_ids"]) for r in rows)
    shared = sum(len(g.prefix) for g in groups) + sum(len(rows[i]["input_ids"]) for i in alone)
    shared += sum(len(rows[i]["input_ids"]) - len(g.prefix) for g in groups for i in g.rows)
    return {"option_rows": len(rows), "full": whole, "shared": shared}


def timed(model, tok, examples, max_length, batch_size, share, precision) -> tuple[float, list]:
    with Runtime.of("cpu", precision).autocast():
        started = time.perf_counter()
        loglik, _ = option_loglik(model, tok, examples, max_length, batch_size, None, share)
    return time.perf_counter() - started, loglik


def argmax(scores: list[float]) -> int:
    return max(range(len(scores)), key=scores.__getitem__)


def agreement(a: list[list[float]], b: list[list[float]]) -> tuple[float, float]:
    """(max |log-likelihood difference|, share of rows choosing the same option)."""
    pairs = list(zip(a, b, strict=True))
    diffs = [abs(x - y) for u, v in pairs for x, y in zip(u, v, strict=True)]
    return max(diffs), sum(argmax(u) == argmax(v) for u, v in pairs) / len(pairs)


def compare(model, tok, task: str, args, precision: str) -> dict:
    examples = load_sample(task, "test", args.rows, 0)
    length = task_max_length(task)
    timed(model, tok, examples[:4], length, args.batch_size, True, precision)  # warm-up
    timed(model, tok, examples[:4], length, args.batch_size, False, precision)
    times = {False: [], True: []}
    scores = {}
    for _ in range(args.repeats):
        for share in (False, True):
            wall, scores[share] = timed(
                model, tok, examples, length, args.batch_size, share, precision
            )
            times[share].append(wall)
    fed = fed_tokens(tok, examples, length)
    paths = {}
    for share, name in ((False, "full"), (True, "shared")):
        median = statistics.median(times[share])
        paths[name] = {
            "seconds": times[share],
            "median_s": median,
            "rows_per_s": len(examples) / median,
            "option_rows_per_s": fed["option_rows"] / median,
            "fed_tokens": fed[name],
            "tokens_per_s": fed[name] / median,
        }
    diff, same = agreement(scores[False], scores[True])
    if precision != "fp32":  # each path against the fp32 full pass
        _, fp32 = timed(model, tok, examples, length, args.batch_size, False, "fp32")
        for share, name in ((False, "full"), (True, "shared")):
            paths[name]["max_abs_diff_to_fp32"], paths[name]["same_choice_as_fp32"] = agreement(
                scores[share], fp32
            )
    result = {
        "task": task,
        "precision": precision,
        "rows": len(examples),
        "option_rows": fed["option_rows"],
        "max_length": length,
        **paths,
        "speedup": paths["full"]["median_s"] / paths["shared"]["median_s"],
        "max_abs_loglik_diff": diff,
        "same_choice": same,
    }
    print(
        f"{task} {precision}: {paths['full']['rows_per_s']:.2f} -> "
        f"{paths['shared']['rows_per_s']:.2f} rows/s ({result['speedup']:.2f}x), "
        f"max |diff| {diff:.2e}, same choice {100 * same:.0f}%"
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", nargs="+", default=["boolq", "mmlu", "copa"])
    parser.add_argument("--rows", type=int, default=48, help="seeded draw of test rows")
    parser.add_argument("--batch-size", type=int, default=8, help="option rows per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/choice_eval.json")
    args = parser.parse_args()
    model, tok = load_model(args.model)
    precisions = ["fp32"] + (["bf16"] if cpu_has_native_bf16() else [])
    results = [compare(model, tok, t, args, p) for p in precisions for t in args.tasks]
    atomic_write_json(
        args.out,
        {
            "benchmark": "choice_eval",
            "model": args.model,
            "command": "python bench/choice_eval.py "
            + " ".join(
                f"--{k.replace('_', '-')} {' '.join(v) if isinstance(v, list) else v}"
                for k, v in vars(args).items()
            ),
            "host": {
                "processor": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads(),
                "native_bf16": cpu_has_native_bf16(),
            },
            "results": results,
            "versions": versions(),
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
