"""bf16 on the CPU: training speed through fanlora's engine, and the loss it reaches.

Speed: SmolLM2-135M with rank-12 LoRA on all 210 modules, one micro-batch of 4 x 128
tokens of the `instruct` train split per step, through ``Trainer.train_step`` in fp32,
bf16 autocast (``--precision bf16``) and, with ``--bf16-weights``, bf16 weights, steps
interleaved so that machine noise hits every variant alike; medians and ratios to fp32.

Tolerance: the embedded default's step 1 (full LoRA on `instruct`) for ``--steps`` steps,
in fp32 and in bf16 autocast under the same seed, and in fp32 under another seed as the
yardstick of run-to-run variation. Goal: bf16's best dev loss within ``--tolerance``
(relative) of fp32's, and closer to it than the other seed's.

    python bench/precision.py --out bench/results/precision.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fanlora.data.formatting import encode_all
from fanlora.data.registry import load_sample
from fanlora.models import load_model
from fanlora.modules import discover_layout
from fanlora.train import TrainConfig, build_peft_config
from fanlora.train.engine import Batches, Trainer
from fanlora.train.outputs import RunFolder
from fanlora.train.run import train
from fanlora.utils.devices import cpu_has_native_bf16
from fanlora.utils.io import atomic_write_json
from fanlora.utils.versions import versions

# name -> (weights dtype, --precision). The autocast variant comes last: accelerate's
# autocast reads its process-wide state, which the last Accelerator made sets. bf16
# weights (--dtype bfloat16) are left out by default: with torch 2.13 on this CPU a step
# took 93 s against fp32's 3.9 s, 98% of it in aten::mm of the backward pass (profiled);
# --bf16-weights adds them.
VARIANTS = {
    "fp32": ("float32", "fp32"),
    "bf16 weights": ("bfloat16", "fp32"),
    "bf16 autocast": ("float32", "bf16"),
}


def engine_trainer(cfg: TrainConfig, rows: list[dict], folder: Path) -> Trainer:
    model, tokenizer = load_model(cfg.model, cfg.dtype)
    data = Batches(rows, rows[:4], len(rows), steps_per_epoch=1, total_steps=10**6, dropped=0)
    trainer = Trainer(cfg, RunFolder(folder), log=lambda _: None)
    config = build_peft_config(cfg, discover_layout(model), data.total_steps, None)
    trainer.setup(model, tokenizer, config, data)
    return trainer


def speed(args, tmp: Path) -> dict:
    """Median seconds per engine step of each variant, steps interleaved."""
    _, tokenizer = load_model(args.model)
    examples = load_sample("instruct", "train", 64, seed=0)
    rows, _ = encode_all(tokenizer, examples, args.max_length)
    rows = [r for r in rows if len(r["input_ids"]) == args.max_length][:4] or rows[:4]
    base = dict(model=args.model, method="full-lora", rank=12, dropout=0.0, micro_batch_size=4)
    trainers = {
        name: engine_trainer(
            TrainConfig(**base, dtype=dtype, precision=precision, device="cpu"), rows, tmp / name
        )
        for name, (dtype, precision) in VARIANTS.items()
        if args.bf16_weights or name != "bf16 weights"
    }
    times: dict[str, list[float]] = {name: [] for name in trainers}
    tokens = sum(len(r["input_ids"]) for r in rows)
    for step in range(args.speed_steps + 1):  # step 0 warms every variant up
        order = list(trainers) if step % 2 == 0 else list(trainers)[::-1]
        for name in order:
            started = time.perf_counter()
            trainers[name].train_step(list(range(len(rows))))
            if step > 0:
                times[name].append(time.perf_counter() - started)
    medians = {k: statistics.median(v) for k, v in times.items()}
    return {
        "tokens_per_step": tokens,
        "median_s": medians,
        "tokens_per_s": {k: tokens / v for k, v in medians.items()},
        "speedup_vs_fp32": {k: medians["fp32"] / v for k, v in medians.items()},
        "times_s": times,
    }


def tolerance(args, tmp: Path) -> dict:
    """Step 1 of the embedded default, longer: fp32, bf16 autocast, fp32 under seed 1."""
    base = dict(
        model=args.model,
        data="instruct",
        method="full-lora",
        rank=12,
        max_steps=args.steps,
        batch_size=8,
        micro_batch_size=4,
        max_length=256,
        eval_every=max(1, args.steps // 3),
        eval_examples=32,
        device="cpu",
    )
    runs = {
        "fp32": dict(seed=0, precision="fp32"),
        "bf16 autocast": dict(seed=0, precision="bf16"),
        "fp32 seed 1": dict(seed=1, precision="fp32"),
    }
    out = {}
    for name, extra in runs.items():
        record = train(TrainConfig(**base, **extra), str(tmp / f"run-{name}"), log=print)
        lines = (tmp / f"run-{name}" / "metrics.jsonl").read_text().splitlines()
        out[name] = {
            "best_dev_loss": record["best_dev_loss"],
            "wall_time_s": record["wall_time_s"],
            "losses": [json.loads(line)["loss"] for line in lines],
        }
    ref = out["fp32"]["best_dev_loss"]
    gap = abs(out["bf16 autocast"]["best_dev_loss"] - ref) / ref
    seed_gap = abs(out["fp32 seed 1"]["best_dev_loss"] - ref) / ref
    return {
        "steps": args.steps,
        "runs": out,
        "bf16_relative_gap": gap,
        "seed_relative_gap": seed_gap,
        "tolerance": args.tolerance,
        "holds": gap <= args.tolerance and gap <= seed_gap,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--speed-steps", type=int, default=5, help="timed steps per variant")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps per loss run")
    parser.add_argument("--tolerance", type=float, default=0.01, help="relative dev-loss gap")
    parser.add_argument("--skip-tolerance", action="store_true")
    parser.add_argument("--bf16-weights", action="store_true", help="also time bf16 weights")
    parser.add_argument("--out", default="bench/results/precision.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        record = {
            "benchmark": "precision",
            "model": args.model,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_has_native_bf16(),
            "versions": versions(),
            "speed": speed(args, Path(tmp)),
        }
        for name, value in record["speed"]["tokens_per_s"].items():
            ratio = record["speed"]["speedup_vs_fp32"][name]
            print(f"{name:<14} {value:6.1f} tokens/s  x{ratio:.2f} of fp32")
        if not args.skip_tolerance:
            record["tolerance"] = tolerance(args, Path(tmp))
            t = record["tolerance"]
            print(
                f"best dev loss: fp32 {t['runs']['fp32']['best_dev_loss']:.4f}, bf16 "
                f"{t['runs']['bf16 autocast']['best_dev_loss']:.4f} (gap "
                f"{100 * t['bf16_relative_gap']:.2f}%), fp32 seed 1 gap "
                f"{100 * t['seed_relative_gap']:.2f}%: holds {t['holds']}"
            )
    atomic_write_json(args.out, record)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
