"""Measured costs of one unit of each kind on this machine, for the grid planner.

Writes ``configs/measured/unit-costs.yaml``, which ``fanlora experiment`` reads to estimate a grid
before running it (:mod:`fanlora.experiment.plan`):

- ``train_tokens_per_s``: step 1 (full LoRA, rank 12, every module) on `instruct`, batch 16
  in micro-batches of 4, ``--max-length`` 256: the median tokens/s of ``--train-steps``
  steps after the first (the engine's own metrics.jsonl);
- ``forward_tokens_per_s``: the dev evaluations of that run;
- ``mean_tokens``: the mean encoded length of 800 seeded training rows of each task;
- ``eval_row_s``: evaluation of ``--eval-rows`` test rows of each of ``--tasks``, seconds
  per row;
- ``score_s``: exact fast AB-scores and first-order scores of the run's adapter on
  ``--score-examples`` validation examples at ``--score-max-length``, per module-example
  and per drawn example.

All of it for ``--model`` in ``--precision`` (auto: bf16 where the CPU computes it), and
``eval_row_s`` again in each of ``--eval-precisions`` that differs from it, as a section
named by the precision (``fp32: {eval_row_s: ...}``: the planner prices a grid's fp32
evaluation from it). ``--add-sections`` measures only those sections and adds them to the
existing ``--out``.

    python bench/unit_costs.py --out configs/measured/unit-costs.yaml
    python bench/unit_costs.py --model qwen2.5-0.5b \
        --out configs/measured/unit-costs-qwen2.5-0.5b.yaml
    python bench/unit_costs.py --add-sections --out configs/measured/unit-costs.yaml
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from fanlora.data.formatting import collate, encode_all
from fanlora.data.registry import load_sample
from fanlora.evaluate.run import EvalConfig, evaluate
from fanlora.models.loading import load_model, load_tokenizer
from fanlora.modules import discover_layout
from fanlora.score.run import ScoreConfig, score
from fanlora.train import TrainConfig
from fanlora.train.run import train
from fanlora.utils.devices import Runtime, cpu_machine
from fanlora.utils.io import atomic_write_text
from fanlora.utils.versions import versions

TASKS = ("boolq", "mmlu", "copa", "squad", "math", "sql")


def mean_tokens(args) -> dict:
    tokenizer = load_tokenizer(args.model)
    out = {}
    for task in ("instruct", *args.tasks):
        rows, _ = encode_all(tokenizer, load_sample(task, "train", 800, 0), args.max_length)
        out[task] = statistics.mean(len(r["input_ids"]) for r in rows)
    out["default"] = max(out.values())
    return out


def train_rate(args, folder: Path) -> float:
    """Median engine tokens/s of step 1's training steps after the first."""
    cfg = TrainConfig(
        model=args.model,
        precision=args.precision,
        data="instruct",
        method="full-lora",
        rank=12,
        batch_size=16,
        micro_batch_size=4,
        max_length=args.max_length,
        max_steps=args.train_steps,
        eval_every=args.train_steps,
        eval_examples=8,
    )
    train(cfg, str(folder), log=lambda _: None)
    steps = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(s["tokens_per_s"] for s in steps[1:])


@torch.no_grad()
def forward_rate(args) -> float:
    """Tokens/s of the base model's forward on 4 x max_length `instruct` tokens (median of 3)."""
    model, tokenizer = load_model(args.model)
    rows, _ = encode_all(tokenizer, load_sample("instruct", "dev", 64, 0), args.max_length)
    rows = sorted(rows, key=lambda r: -len(r["input_ids"]))[:4]
    batch = collate(rows, tokenizer.pad_token_id)
    times = []
    for _ in range(4):
        started = time.perf_counter()
        with Runtime.of("cpu", args.precision).autocast():
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        times.append(time.perf_counter() - started)
    return int(batch["attention_mask"].sum()) / statistics.median(times[1:])


def eval_rates(args, precision: str) -> dict:
    out = {}
    for task in args.tasks:
        with tempfile.TemporaryDirectory() as tmp:
            started = time.time()
            evaluate(
                EvalConfig(
                    model=args.model,
                    task=task,
                    split="test",
                    limit=args.eval_rows,
                    precision=precision,
                ),
                Path(tmp),
                log=lambda _: None,
            )
            out[task] = (time.time() - started) / args.eval_rows
    out["default"] = max(out.values())
    return out


def score_rates(args, adapter: Path) -> dict:
    out = {}
    for method, key in (("ab", "ab_per_module_example"), ("first-order", "first_order")):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = ScoreConfig(
                model=args.model,
                precision=args.precision,
                adapter=str(adapter),
                val_examples=args.score_examples,
                batch_size=2,
                max_length=args.score_max_length,
                method=method,
            )
            started = time.time()
            doc = score(cfg, Path(tmp) / "scores.json", log=lambda _: None)
            seconds = time.time() - started
        if method == "ab":
            out[key] = seconds / (len(doc["scores"]) * args.score_examples)
        else:
            out[f"{key}_per_example"] = seconds / args.score_examples
            out["sensitivity_per_example"] = seconds / args.score_examples / 2
    return out


def precision_sections(args) -> dict:
    """``eval_row_s`` in each of ``--eval-precisions`` other than the measured precision."""
    measured = Runtime.of("cpu", args.precision).precision
    others = [p for p in args.eval_precisions if Runtime.of("cpu", p).precision != measured]
    return {p: {"eval_row_s": eval_rates(args, p)} for p in others}


def measure(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        adapter = Path(tmp) / "step1"
        return {
            "machine": cpu_machine(),
            "precision": Runtime.of("cpu", args.precision).precision,
            "train_tokens_per_s": train_rate(args, adapter),
            "forward_tokens_per_s": forward_rate(args),
            "modules": len(discover_layout(load_model(args.model)[0]).all_names()),
            "mean_tokens": mean_tokens(args),
            "score_s": score_rates(args, adapter),
            "eval_row_s": eval_rates(args, args.precision),
            "decode_s": 52,
            **precision_sections(args),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--eval-precisions", nargs="*", default=["fp32"])
    parser.add_argument(
        "--add-sections", action="store_true", help="only the --eval-precisions, into --out"
    )
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), help="evaluated tasks")
    parser.add_argument("--train-steps", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--eval-rows", type=int, default=16)
    parser.add_argument("--score-examples", type=int, default=4, help="drawn from dev")
    parser.add_argument(
        "--score-max-length", type=int, default=768, help="69 of 81 `instruct` dev dialogues fit"
    )
    parser.add_argument("--out", default="configs/measured/unit-costs.yaml")
    args = parser.parse_args()
    started = time.time()
    out = Path(args.out)
    if args.add_sections:
        text = out.read_text()
        header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
        costs = yaml.safe_load(text)
        if costs.get("machine", cpu_machine()) != cpu_machine():
            sys.exit(
                f"--add-sections: {out} was measured on {costs['machine']}; this machine is "
                f"{cpu_machine()}: measure the whole file here (without --add-sections)"
            )
        costs.setdefault("precision", Runtime.of("cpu", args.precision).precision)
        costs.update(precision_sections(args))
        what = "Sections added by"
    else:
        header, costs = "", measure(args)
        what = "Measured unit costs for the grid planner (fanlora experiment --plan), written by"
    header += (
        f"# {what}\n#   python bench/unit_costs.py {command_flags(args)}\n"
        f"# on {args.model}, {costs['precision']}, in {time.time() - started:.0f} s.\n"
        f"# versions: {json.dumps(versions())}\n"
    )
    if not args.add_sections:
        header += "# decode_s: the pipeline's decoding unit (docs/demo-run/6-decode/stage.json).\n"
    atomic_write_text(out, header + yaml.safe_dump(costs, sort_keys=False))
    print(out.read_text())


def command_flags(args) -> str:
    """The command line that reproduces ``args`` (switches named only when on)."""
    flags = []
    for key, value in vars(args).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags.append(f"{flag} {' '.join(value) if isinstance(value, list) else value}")
    return " ".join(flags)


if __name__ == "__main__":
    main()
